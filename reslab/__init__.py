"""reslab: residual connections as one pluggable module -- use, train, compare and diagnose them.

    import reslab
    conn = reslab.connection("ancre(tau=0.01)", n_blocks=8, dim=256)
    y = conn(x, blocks)                 # blocks: list of lists of branches f(x) -> x-shaped tensor
    reslab.list_connections()           # every scheme, its options, paper and parameter formula
    with reslab.record(model) as rec:   # what each connection computed, for diagnostics
        model(x)
    reslab.patch(hf_model, "laurel(rw, lr)")   # any scheme into a model you already have
"""
from .analysis.record import record
from .connections import Connection, connection, connection_names, list_connections
from .patch import param_groups, patch, unpatch  # noqa: E402  (the function shadows the subpackage's name)

__version__ = "0.1.0"
__all__ = ["Connection", "connection", "connection_names", "list_connections", "param_groups", "patch", "record",
           "unpatch", "__version__"]
