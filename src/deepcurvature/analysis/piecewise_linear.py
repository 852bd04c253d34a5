"""Networks whose Hessian diagonal equals their Gauss-Newton diagonal.

The Hessian of ``L(f(theta))`` splits into the GGN and a residual (section 3 of the paper):

    d^2 L / d theta_i^2 = J_i^T H_out J_i + sum_c (dL/df_c) d^2 f_c / d theta_i^2.

When the network output is piecewise linear in every single parameter ``theta_i`` (the others
held fixed), ``d^2 f_c / d theta_i^2 = 0`` almost everywhere, and the *diagonal* of the Hessian is
exactly the diagonal of the GGN, for any loss; only the off-diagonal entries differ (the network
is not linear in two parameters of different layers together). That holds for chains of layers
that are linear in their own parameters and piecewise linear in their input: linear and
convolution layers, ReLU-type activations, max and average pooling, and batch norm with its
running statistics (an affine map per channel). It fails for smooth activations (tanh, GELU),
normalisation by batch or sample statistics (batch norm in train mode, layer norm), attention and
any parameter used twice. The exact Hessian diagonal (and trace) of such a network then costs
``D`` per-sample vector-Jacobian products per sample (``D`` outputs) instead of ``P`` Hessian-vector
products (BackPACK's ``DiagHessian`` relies on the same fact for ReLU networks).

:func:`piecewise_linear_obstacle` recognises such networks conservatively: ``nn.Sequential``
chains (nested) of the modules in :data:`PIECEWISE_LINEAR_MODULES`, each module with parameters
and each parameter used once. A custom ``forward`` is not inspected, so a residual network built
from custom modules is not recognised even when it qualifies; ``method="gauss-newton"`` of
:func:`~.diagonals.hessian_diagonal` asserts it.
"""

from __future__ import annotations

from torch import nn

from ..operators.chain import PIECEWISE_LINEAR_MODULES
from ..operators.model_state import tied_aliases

__all__ = ["PIECEWISE_LINEAR_MODULES", "piecewise_linear_obstacle"]

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def piecewise_linear_obstacle(model: nn.Module, bn_mode: str = "eval") -> str | None:
    """Why ``model`` is not recognised as piecewise linear in every parameter, or ``None`` if it is.

    ``None`` means: ``model`` is an ``nn.Sequential`` chain (possibly nested) of modules from
    :data:`PIECEWISE_LINEAR_MODULES` (and batch norm when ``bn_mode == "eval"``), no module with
    parameters appears twice and no parameter is shared, so the Hessian diagonal equals the GGN
    diagonal.
    """
    aliases = tied_aliases(model)
    if aliases:
        alias, name = aliases[0]
        return f"{alias!r} and {name!r} are the same tensor (the output is not linear in it)"
    seen: dict[int, str] = {}

    def visit(module: nn.Module, name: str) -> str | None:
        where = name or "the model"
        if id(module) in seen and any(True for _ in module.parameters()):
            return f"{where} is the same module object as {seen[id(module)] or 'the model'}"
        seen.setdefault(id(module), name)
        if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
            # _modules, not named_children(): a module registered twice must be seen twice
            for child_name, child in module._modules.items():
                if child is None:
                    continue
                reason = visit(child, f"{name}.{child_name}" if name else child_name)
                if reason is not None:
                    return reason
            return None
        if isinstance(module, _BATCH_NORMS):
            if bn_mode != "eval":
                return f"{where} is batch norm with batch statistics (bn_mode={bn_mode!r})"
            return None
        if type(module) in PIECEWISE_LINEAR_MODULES:
            return None
        return (
            f"{where} ({type(module).__name__}) is not a known piecewise-linear layer inside an "
            "nn.Sequential chain"
        )

    return visit(model, "")
