"""FeNNol-PMC files are found in the models directory, then the cache, then downloaded; all checked.

Downloads go to a local HTTP server or to a closed local port: no test needs the network.
"""

import functools
import shutil
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mlff_distill.teachers.fennol_pmc import (
    LFS_BASE_URL,
    RAW_BASE_URL,
    fennol_pmc_manifest,
    resolve_fennol_pmc,
)

ANI1X_PATHS = [f"ANI/ANI1X/ani1x_model{i}.fnx" for i in range(8)]


def closed_port_url() -> str:
    """A local URL nothing listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def copy_ani1x(models_dir: Path, into: Path) -> None:
    """The shared ANI-1x files laid out under ``into`` with the repository's paths."""
    for path in ANI1X_PATHS:
        (into / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(models_dir / "fennol-pmc" / "ANI1X" / Path(path).name, into / path)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def file_server(tmp_path):
    """An HTTP server on localhost serving ``tmp_path / "served"``; yields (folder, base URL)."""
    served = tmp_path / "served"
    served.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def test_manifest_names_and_lfs_files():
    table = fennol_pmc_manifest()
    assert sorted(table) == sorted(
        [
            "ani1x",
            "ani1ccx",
            "ani2x",
            "mace-off23-small",
            "mace-off23-medium",
            "mace-off23-large",
            "mace-mp-small",
            "mace-mp-medium",
            "mace-mp-large",
        ]
    )
    assert [f.path for f in table["ani1x"]] == ANI1X_PATHS
    assert len(table["ani2x"]) == len(table["ani1ccx"]) == 8
    lfs = {f.path for files in table.values() for f in files if f.lfs_sha256}
    assert lfs == {"MACE-OFF23/mace_off_large.fnx", "MACE-MP/mace_mp_large.fnx"}
    assert table["mace-mp-large"][0].url() == f"{LFS_BASE_URL}/MACE-MP/mace_mp_large.fnx"
    assert table["mace-mp-small"][0].url() == f"{RAW_BASE_URL}/MACE-MP/mace_mp_small.fnx"


def test_models_dir_short_layout_is_found_and_checked(models_dir, tmp_path):
    found = resolve_fennol_pmc("ani1x", models_dir, tmp_path / "cache", raw_base_url=closed_port_url())
    assert found == [models_dir / "fennol-pmc" / "ANI1X" / Path(p).name for p in ANI1X_PATHS]
    assert not (tmp_path / "cache").exists()


def test_models_dir_before_cache_then_cache(models_dir, tmp_path):
    in_models, cache = tmp_path / "models", tmp_path / "cache"
    copy_ani1x(models_dir, in_models / "fennol-pmc")
    copy_ani1x(models_dir, cache / "fennol-pmc")
    offline = closed_port_url()
    both = resolve_fennol_pmc("ani1x", in_models, cache, raw_base_url=offline)
    assert both == [in_models / "fennol-pmc" / p for p in ANI1X_PATHS]
    empty_models = tmp_path / "empty"
    assert resolve_fennol_pmc("ani1x", empty_models, cache, raw_base_url=offline) == [
        cache / "fennol-pmc" / p for p in ANI1X_PATHS
    ]
    assert resolve_fennol_pmc("ani1x", None, cache, raw_base_url=offline)[0].parent == (
        cache / "fennol-pmc" / "ANI" / "ANI1X"
    )


def test_corrupted_local_file_is_rejected(models_dir, tmp_path):
    cache = tmp_path / "cache"
    copy_ani1x(models_dir, cache / "fennol-pmc")
    corrupted = cache / "fennol-pmc" / ANI1X_PATHS[3]
    data = bytearray(corrupted.read_bytes())
    data[1000] ^= 0xFF
    corrupted.write_bytes(bytes(data))
    expected = "61e975e7af40fe3a6ddac0c70b90d0e30727c53d"  # ANI/ANI1X/ani1x_model3.fnx
    with pytest.raises(
        ValueError,
        match=rf"{corrupted}: git blob SHA-1 [0-9a-f]{{40}} differs "
        rf"from FeNNol-PMC's {expected}",
    ):
        resolve_fennol_pmc("ani1x", None, cache, raw_base_url=closed_port_url())


def test_offline_error_says_what_to_place_where(tmp_path):
    offline = closed_port_url()
    models, cache = tmp_path / "models", tmp_path / "cache"
    with pytest.raises(FileNotFoundError) as raised:
        resolve_fennol_pmc("mace-off23-small", models, cache, raw_base_url=offline, lfs_base_url=offline, timeout_s=2)
    message = str(raised.value)
    assert "download failed" in message and "Connection refused" in message
    assert (
        f"{offline}/MACE-OFF23/mace_off_small.fnx -> "
        f"{models / 'fennol-pmc' / 'MACE-OFF23' / 'mace_off_small.fnx'} or "
        f"{cache / 'fennol-pmc' / 'MACE-OFF23' / 'mace_off_small.fnx'}"
    ) in message
    with pytest.raises(FileNotFoundError, match=r"mace_off_large.fnx \(Git LFS file\)"):
        resolve_fennol_pmc("mace-off23-large", None, cache, raw_base_url=offline, lfs_base_url=offline, timeout_s=2)
    assert not list(cache.rglob("*.fnx*"))  # no partial files left behind


def test_unknown_name():
    with pytest.raises(ValueError, match=r"unknown FeNNol-PMC model 'ani3x'; known: ani1x"):
        resolve_fennol_pmc("ani3x", None, Path("unused"))


def test_download_is_checked_and_cached(models_dir, tmp_path, file_server):
    served, url = file_server
    copy_ani1x(models_dir, served)
    cache = tmp_path / "cache"
    found = resolve_fennol_pmc("ani1x", None, cache, raw_base_url=url, lfs_base_url=url)
    assert found == [cache / "fennol-pmc" / p for p in ANI1X_PATHS]
    assert sorted(p.name for p in (cache / "fennol-pmc" / "ANI" / "ANI1X").iterdir()) == sorted(
        Path(p).name for p in ANI1X_PATHS
    )  # no temporary files left
    # Now in the cache: found there even with nothing to download from.
    assert resolve_fennol_pmc("ani1x", None, cache, raw_base_url=closed_port_url()) == found


def test_corrupted_download_is_not_cached(models_dir, tmp_path, file_server):
    served, url = file_server
    copy_ani1x(models_dir, served)
    (served / ANI1X_PATHS[0]).write_bytes(b"not a model")
    cache = tmp_path / "cache"
    with pytest.raises(
        ValueError,
        match=rf"download of {url}/{ANI1X_PATHS[0]}: git blob SHA-1 "
        rf"[0-9a-f]{{40}} differs from FeNNol-PMC's 15d5b0df",
    ):
        resolve_fennol_pmc("ani1x", None, cache, raw_base_url=url, lfs_base_url=url)
    assert not list(cache.rglob("*.fnx*"))
