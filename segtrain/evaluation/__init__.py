"""Evaluation a paper can cite: per-case Dice, IoU, HD95, ASSD, NSD and lesion counts, with bootstrap intervals.

- ``scores``: one case against its label (MONAI's surface-distance functions; the empty-mask rules).
- ``detection``: connected-component (lesion) counts and their overlap rule.
- ``summary``: per-case rows → mean, std, median, bootstrap CI, global Dice; CSV, JSON and markdown.
- ``folders``: ``segtrain-evaluate pred=DIR label=DIR``: match files by case, check them, score, write.

docs/evaluation.md states every rule with an example summary.
"""

from segtrain.evaluation.folders import evaluate_folders
from segtrain.evaluation.scores import METRICS, ScoreSettings, score_case
from segtrain.evaluation.summary import summarise, write_results

__all__ = ["METRICS", "ScoreSettings", "evaluate_folders", "score_case", "summarise", "write_results"]
