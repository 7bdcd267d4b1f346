"""Tune callbacks: adapters that collect trial outcomes and call `raysim.analysis` (no statistics here)."""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

from raysim.config import MatrixConfig


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


class StudyCallback(Callback):
    """Tests each hypothesis as soon as its arms are done, and writes the report at the end."""

    def __init__(self, study_dir: str, matrix: MatrixConfig):
        self.study_dir = study_dir
        self.matrix = matrix
        self._announced: set[str] = set()
        self._results: list[dict[str, Any]] = []
        self.report_path: str | None = None

    def __getstate__(self) -> dict[str, Any]:  # pickled into tuner.pkl; results are rebuilt from storage
        return {**self.__dict__, "_results": [], "report_path": None}

    def _evaluate(self) -> list[dict[str, Any]]:
        from raysim.analysis import evaluate_hypotheses, load, load_per_trajectory

        df = load(self.study_dir)
        per_traj = load_per_trajectory(self.study_dir, self.matrix.metric)
        return evaluate_hypotheses(df, self.matrix.hypotheses, per_traj, self.matrix.metric)

    @staticmethod
    def _done_arms(trials: list[Any], just_done: Any) -> set[str]:
        # the trial being completed still shows its old status while its callback runs
        finished = [t for t in trials if t is just_done or t.status in ("TERMINATED", "ERROR")]
        pending = {t.config.get("arm") for t in trials if t not in finished}
        return {t.config.get("arm") for t in finished} - pending

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._announce(trials, trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        print(f"[raysim] trial {trial.config.get('arm')} seed {trial.config.get('seed')} failed; "
              "the report will say why", flush=True)
        self._announce(trials, trial)

    def _announce(self, trials: list[Any], just_done: Any) -> None:
        done = self._done_arms(trials, just_done)
        ready = [h for h in self.matrix.hypotheses if h.id not in self._announced
                 and h.candidate in done and (h.reference is None or h.reference in done)]
        if not ready:
            return
        try:
            results = {r["id"]: r for r in self._evaluate()}
        except Exception as exc:  # a report problem must never kill the study
            print(f"[raysim] hypotheses not evaluated yet: {exc}", flush=True)
            return
        for h in ready:
            r = results[h.id]
            self._announced.add(h.id)
            print(f"[raysim] {h.id}: {r['verdict']} (ratio {_fmt(r.get('ratio'))}, "
                  f"95% CI [{', '.join(_fmt(c) for c in (r.get('ci') or [None, None]))}])", flush=True)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.finish()

    def finish(self) -> str:
        """Write the report from storage (once); the path of the Markdown file."""
        from raysim.analysis import storage
        from raysim.analysis.report import write_report
        from raysim.train.stages import checkpoint_loads

        if self.report_path is None:
            folder = write_report(self.study_dir, load_checkpoint=checkpoint_loads)
            self.report_path = storage.join(str(folder), "ablation_report.md")
            self._results = self._evaluate()
        return self.report_path

    def table(self) -> str:
        """The hypothesis table for the terminal."""
        from raysim.analysis.report import hypothesis_table

        return hypothesis_table(self._results or self._evaluate())
