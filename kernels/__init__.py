"""Compute kernels: each op family has its NumPy reference and its Numba CPU kernels side by side,
and its Numba CUDA kernels in `<op>_cuda.py` (installed as `gptoss_np.kernels`).

Numba's OpenMP threads spin for a long while after each parallel loop by default, and then fight
OpenBLAS's threads for the cores when the two alternate, as prefill does (10-50x slower kernels);
never spinning costs ~50 us to wake the threads at every launch, which decode (a hundred small
launches a token) cannot afford. A short spin (about 10 us) gets both, unless the user chose.
OpenBLAS's spin is shortened when a model is loaded on the CPU (gptoss_np/cpu_threads.py).
"""

import os

os.environ.setdefault("GOMP_SPINCOUNT", "3000")
