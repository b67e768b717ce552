"""``pkd demo``: the whole chain on the built-in synthetic benchmark, end to end on a CPU.

synthetic data -> pre-train the demo foundation model on the unbiased captions -> extract
foundation features, student regions and aligned teacher regions into stores -> train each method
(per seed) -> evaluate on the shifted ``test`` (OOD) and the in-distribution ``test_iid`` split ->
``results.json``, ``results.md`` (the table :func:`results_table` builds, as Markdown) and
``results.png``. Every stage is resumable: re-running the command skips what is done.

``results.json`` accumulates over invocations on one folder (:mod:`pkd.demo.results_file`: an
invocation's rows replace those with the same ``(method, seed, data_seed, split)``, the others
stay; ``pkd results OUT`` rebuilds every table from it): ``{"elapsed_s": float, "rows":
[{"method", "seed", "data_seed", "split", "overall", "perAnswerType", "perQuestionType",
"ms_per_question", "prior", "prior_gold"}]}`` (``data_seed``: the data draw, 0 when absent;
percent, official metric; model forward time per question while evaluating; share of answers
that are the training favourite of their question type, and the share of gold answers that
are — :mod:`pkd.data.prior`) plus
``"models"`` (parameter counts), ``"draws"`` (per data draw: ``"region_probes"``, the
linear-probe accuracy of shape and colour from each regions store, :mod:`pkd.demo.probe`;
``"foundation_probes"``; ``"blind_rules"``, :mod:`pkd.demo.blind`; ``"answer_priors"``) and
``"stage_seconds"`` (wall time of each stage, summed over the processes of ``--jobs``; a
resumed stage costs ~0) — dicts merged key by key over invocations — ``"elapsed_s"``,
``"preset"``, ``"machine"`` of the latest invocation, ``"invocations"`` (one entry each:
``elapsed_s``, ``machine``, ``preset``, ``methods``, ``finished``) and ``"summary"``
(:func:`summarize`: per method and split, ``mean``, ``ci_low``, ``ci_high`` — the 95%
Student-t interval over seeds, or over data draws' means when there are several, None for one
seed — ``n``, ``seeds``, ``data_seeds``, ``runs``, and the paired difference of overall
accuracy to the ``reference`` row on the same runs, ``diff_mean``, ``diff_ci_low``,
``diff_ci_high``; :data:`REFERENCE`).

Modules: :mod:`pkd.demo.config` (sizes, row groups), :mod:`pkd.demo.rows` (the row files in
``configs/rows/``), :mod:`pkd.demo.prepare` (data, foundation, stores), :mod:`pkd.demo.run`
(train, evaluate, :func:`run_demo`), :mod:`pkd.demo.summary` (tables). This package re-exports
what the CLI and the tests call.

The demo's models are tiny and randomly initialised where no pre-trained weights exist (the
region backbones): the numbers show the methods' mechanics on this benchmark, not their
published results.
"""

from __future__ import annotations

from pkd.demo.config import (
    ABLATIONS,
    ALIGNMENT,
    CONTROLS,
    DEBIAS,
    DEMO_PRESETS,
    FULL_METHODS,
    KNOWN,
    MAIN_METHODS,
    POSTHOC_ROWS,
    READINGS,
    SPLITS,
    STAGE_RUNS,
    SWEEPS,
    DemoConfig,
    draw_config,
    row_vars,
    run_dir,
)
from pkd.demo.prepare import Paths, check_same_benchmark, prepare
from pkd.demo.rows import needs, row_config
from pkd.demo.run import control_rows, run_config, run_demo, save_results, train_run
from pkd.demo.summary import (
    REFERENCE,
    TEXT_COLUMNS,
    checks_table,
    extra_tables,
    markdown_table,
    reference_of,
    results_markdown,
    results_table,
    summarize,
)

__all__ = ["ABLATIONS", "ALIGNMENT", "CONTROLS", "DEBIAS", "DEMO_PRESETS", "FULL_METHODS", "KNOWN",
           "MAIN_METHODS", "POSTHOC_ROWS", "READINGS", "REFERENCE", "SPLITS", "STAGE_RUNS",
           "SWEEPS", "TEXT_COLUMNS", "DemoConfig", "Paths", "check_same_benchmark",
           "checks_table", "control_rows", "draw_config", "extra_tables", "markdown_table",
           "needs", "prepare", "reference_of", "results_markdown", "results_table", "row_config",
           "row_vars", "run_config",
           "run_demo", "run_dir", "save_results", "summarize", "train_run"]
