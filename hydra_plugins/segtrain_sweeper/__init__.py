"""segtrain's Optuna sweeper: hydra-optuna-sweeper's, ending like any segtrain sweep when no trial finished.

Hydra takes sweepers only from the ``hydra_plugins`` namespace, so this lives here, beside the segtrain
package (both ship in its wheel). ``configs/hparams_search/optuna_tversky.yaml`` selects it with
``hydra.sweeper._target_``. The original ends a study in which every trial failed with a traceback
(``No trials are completed yet``, while writing ``optimization_results.yaml``); this one logs one line
instead, so that the sweep's end report lists the failed trials and exits with their code
(``segtrain/callbacks/sweep.py``); and it drops Optuna's notice that a failed trial returned no value
(the run printed its own error line). A study continued from its database gets new samples rather than
its first trials again (the sampler's seed plus the trials done). Without the ``sweep`` extra this
module defines nothing.
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

    def _seed_sampler(sampler: Any, seed: int) -> None:
        """Optuna 2's TPE and random samplers draw from ``_rng`` (and TPE's start-up trials from its
        ``_random_sampler``): seeded as their constructors do. Another sampler is reseeded at random."""
        import numpy as np

        if not hasattr(sampler, "_rng"):
            sampler.reseed_rng()
            return
        sampler._rng = np.random.RandomState(seed)
        if hasattr(sampler, "_random_sampler"):
            _seed_sampler(sampler._random_sampler, seed)

    class SegtrainOptunaSweeper(_OptunaSweeper):
        """``OptunaSweeper`` that ends a study without a finished trial normally and continues a stored study
        with new samples."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._seed: int | None = None
            impl = logging.getLogger("hydra_plugins.hydra_optuna_sweeper._impl")
            if not any(isinstance(f, _NoValueNotice) for f in impl.filters):
                impl.addFilter(_NoValueNotice())

        def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
            from omegaconf import OmegaConf

            super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
            self._seed = OmegaConf.select(config, "hydra.sweeper.sampler.seed", default=None)

        def _continue_stored_study(self) -> None:
            """A study continued from its database (``hydra.sweeper.storage``) would draw the same start-up
            trials again from the same seed: the sampler is seeded with the seed + the trials already done."""
            import optuna

            impl = self.sweeper
            if not impl.storage:
                return
            try:
                done = len(optuna.load_study(study_name=impl.study_name, storage=impl.storage).trials)
            except (KeyError, ValueError):  # a new study (or no name to find it by)
                return
            if done and hasattr(impl.sampler, "reseed_rng"):
                if self._seed is None:
                    impl.sampler.reseed_rng()
                else:
                    _seed_sampler(impl.sampler, int(self._seed) + done)
                log.info("segtrain: study %s continues after %d trial(s)", impl.study_name, done)

        def sweep(self, arguments: list[str]) -> Any:
            self._continue_stored_study()
            try:
                return super().sweep(arguments)
            except ValueError as err:
                if "No trials are completed yet" not in str(err):
                    raise
                log.error("segtrain: sweep: no trial finished, so there is no best trial (no optimization_results.yaml)")
                return None
