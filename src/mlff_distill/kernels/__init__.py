"""Triton kernels for the student force field.

- `edge_message.edge_message_triton`: the edge part of one interaction layer (distance, Bessel x
  cosine basis, filter matmul, product with the neighbours' features, scatter-add into atoms) fused
  into one forward and one backward kernel; matches
  `mlff_distill.student.edge_message.edge_message_torch`.
- `bessel_cosine.bessel_cosine_basis_triton`: the radial basis alone (distances in Angstrom) and
  its analytic derivative; matches `mlff_distill.reference.radial.bessel_cosine_basis`.
- `traffic`: the bytes the fused edge-message kernels move (for bandwidth figures).

On a CUDA device the kernels are autotuned over block sizes, warps and stages (the ``tune`` stage
records the choices per GPU model; `mlff_distill.student.tuned_kernels.load_tuned_kernels` installs them).
Without a GPU they run (slowly) in Triton's interpreter on CPU tensors: set the environment
variable ``TRITON_INTERPRET=1`` before `triton` or this package's kernel modules are imported, e.g.
``TRITON_INTERPRET=1 python -m pytest tests/test_kernels.py``. The interpreter cannot autotune, so
there the kernels launch with one fixed config (``DEFAULT_CONFIG`` of each module, or the
``config`` argument).
"""
