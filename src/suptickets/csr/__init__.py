"""Really sparse model files, and a CPU inference module that runs on them (the `export` stage).

`save` writes a masked model as a safetensors file with BatchNorm folded (`bn_fold`) and each
masked Linear / Conv2d weight in compressed sparse row form (`files`: the format, written, read
and checked). `load` returns an eval-mode module in which each CSR layer (`layers`) runs torch's
sparse product or the dense kernel: `kernel="csr"`, `"dense"`, or `"auto"`, which times both on
this machine for each of `batch_sizes` and keeps the faster, per layer and batch size, unless the
whole model runs faster with dense kernels everywhere at that batch size (`timing`). `outputs`
and `verify` check that the loaded file predicts what the masked model predicts (`inference`).

Here are the names a stage or a user of a sparse file calls; the rest live in their modules.
"""

from .files import architecture, build, dense_bytes, layer_stats, read_architecture, save
from .inference import TOLERANCE, load, outputs, verify
from .layers import kernels
from .timing import latency

__all__ = ["architecture", "build", "dense_bytes", "layer_stats", "read_architecture", "save",
           "TOLERANCE", "load", "outputs", "verify", "kernels", "latency"]
