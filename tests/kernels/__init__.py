"""Tests of the kernels library: variants, mutations, reference, compiled, Triton."""
