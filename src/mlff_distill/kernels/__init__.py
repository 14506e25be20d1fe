"""Triton kernels for the student force field.

`bessel_cosine.bessel_cosine_basis_triton` computes the student's radial basis
(Bessel functions times a cosine cutoff, distances in Angstrom) and its analytic
derivative in fused kernels; it matches `mlff_distill.student.radial.bessel_cosine_basis`.

On a CUDA device the kernels are autotuned over edges per program, warps and stages.
Without a GPU they run (slowly) in Triton's interpreter on CPU tensors: set the
environment variable ``TRITON_INTERPRET=1`` before `triton` or this package's kernel
modules are imported, e.g. ``TRITON_INTERPRET=1 python -m pytest tests/test_kernels.py``.
The interpreter cannot autotune, so there the kernels launch with one fixed config
(`bessel_cosine.DEFAULT_CONFIG`, or the ``config`` argument).
"""
