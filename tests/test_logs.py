"""Stage logs (`mlff_distill.logs`)."""

import logging

from mlff_distill.logs import stage_logger


def test_stage_log_holds_the_messages_of_the_modules_it_calls(tmp_path):
    log_file = tmp_path / "train.log"
    stage_logger("train", log_file).info("from the stage")
    logging.getLogger("mlff_distill.student.loss").info("from the loss module")
    text = log_file.read_text()
    assert "mlff_distill.train INFO from the stage" in text
    assert "mlff_distill.student.loss INFO from the loss module" in text
