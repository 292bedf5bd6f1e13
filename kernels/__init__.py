"""Compute kernels: each op family has its NumPy reference, its Numba CPU kernel and, later, its
Numba CUDA kernel side by side (installed as `gptoss_np.kernels`).

Numba's OpenMP threads spin after each parallel loop by default and then fight OpenBLAS's threads
for the cores (10-50x slower kernels when the two alternate, as prefill does): ask OpenMP to sleep
instead, unless the user chose a policy.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
