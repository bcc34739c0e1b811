"""segtrain's Optuna sweeper: hydra-optuna-sweeper's, ending like any segtrain sweep when no trial finished.

Hydra takes sweepers only from the ``hydra_plugins`` namespace, so this lives here, beside the segtrain
package (both ship in its wheel). ``configs/hparams_search/optuna_tversky.yaml`` selects it with
``hydra.sweeper._target_``. The original ends a study in which every trial failed with a traceback
(``No trials are completed yet``, while writing ``optimization_results.yaml``); this one logs one line
instead, so that the sweep's end report lists the failed trials and exits with their code
(``segtrain/callbacks/sweep.py``); and it drops Optuna's notice that a failed trial returned no value
(the run printed its own error line). Without the ``sweep`` extra this module defines nothing.
"""

from __future__ import annotations

import logging
from typing import Any

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as _OptunaSweeper
except ImportError:  # hydra-optuna-sweeper is not installed: nothing to extend
    _OptunaSweeper = None

log = logging.getLogger("segtrain")

if _OptunaSweeper is not None:

    class _NoValueNotice(logging.Filter):
        """A failed run returns no value (it printed its own error line): Optuna's "Got 'None'" lines add nothing."""

        def filter(self, record: logging.LogRecord) -> bool:
            return "Got 'None'" not in record.getMessage()

    class SegtrainOptunaSweeper(_OptunaSweeper):
        """``OptunaSweeper`` that returns normally from a study without a finished trial."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            impl = logging.getLogger("hydra_plugins.hydra_optuna_sweeper._impl")
            if not any(isinstance(f, _NoValueNotice) for f in impl.filters):
                impl.addFilter(_NoValueNotice())

        def sweep(self, arguments: list[str]) -> Any:
            try:
                return super().sweep(arguments)
            except ValueError as err:
                if "No trials are completed yet" not in str(err):
                    raise
                log.error("segtrain: sweep: no trial finished, so there is no best trial (no optimization_results.yaml)")
                return None
