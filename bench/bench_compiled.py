"""The service's numpy pipeline compiler against the maintained alternative, skl2onnx + onnxruntime.

On the generated month_000, for each classifier the trainer offers (the default spline logistic
regression, plain logistic regression, HistGradientBoosting), seed 42: the fitted pipeline is
scored on the same rows the service would pass (dicts from the feature reader) in calls of 1, 8
and 64 rows, three ways:

- `numpy`: `PipelineModel.predict_proba`, the compiled array path the service uses
  (model/compiled.py; the pipeline itself when a step has no array equivalent);
- `onnxruntime`: the pipeline converted with skl2onnx (numeric inputs as float32, booleans as
  int64, strings as strings), one intra-op thread, rows turned into per-column arrays per call;
- `sklearn`: the pipeline's own `predict_proba` on a DataFrame.

Printed: median and p99 microseconds per call, and the largest difference from sklearn's
probabilities. A pipeline skl2onnx can't convert is reported with its reason.
Run: `python -m bench compiled`.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.harness import machine  # noqa: E402
from streamflow_mlops.model.compiled import PipelineModel  # noqa: E402
from streamflow_mlops.model.training import frame_from_tables, train_model  # noqa: E402
from streamflow_mlops.synthetic.generate import DropSpec, build_drop  # noqa: E402

CLASSIFIERS = ("spline_logreg", "logreg", "hgb")
BATCHES = (1, 8, 64)
CALLS = int(os.environ.get("BENCH_COMPILED_CALLS", "2000"))


def timed_us(call, calls: int) -> tuple[float, float]:
    for _ in range(min(50, calls)):
        call()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    times.sort()
    return times[len(times) // 2] * 1e6, times[int(len(times) * 0.99)] * 1e6


class OnnxModel:
    """A fitted pipeline converted by skl2onnx, fed per-column arrays built from dict rows."""

    def __init__(self, pipeline, example: pd.DataFrame, columns: list[str]) -> None:
        import onnxruntime as ort
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import FloatTensorType, Int64TensorType, StringTensorType

        self.columns = columns
        self.kinds: list[tuple[str, type]] = []
        initial = []
        for column in columns:
            dtype = example[column].dtype
            if dtype.kind == "O":
                kind, tensor = object, StringTensorType([None, 1])
            elif dtype.kind == "b":
                kind, tensor = np.int64, Int64TensorType([None, 1])
            else:  # one numeric type for skl2onnx's concatenation; float32, which every ONNX ML op takes
                kind, tensor = np.float32, FloatTensorType([None, 1])
            self.kinds.append((column, kind))
            initial.append((column, tensor))
        classifier = pipeline.steps[-1][1]
        model = to_onnx(
            pipeline,
            initial_types=initial,
            target_opset={"": 18, "ai.onnx.ml": 3},
            options={id(classifier): {"zipmap": False}},
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def predict_proba(self, rows) -> np.ndarray:
        feeds = {
            column: np.array([row[column] for row in rows], dtype=kind).reshape(-1, 1) for column, kind in self.kinds
        }
        return self.session.run(None, feeds)[1][:, 1]


def main() -> None:
    print(f"machine: {machine()}")
    spec = DropSpec(month=0)
    tables, _ = build_drop(spec)
    frame = frame_from_tables(tables, spec.as_of)
    print(f"month_000, {len(frame):,} users, {CALLS} calls per cell (p99 over them)")
    header = f"{'model':<14}{'rows':>5}{'numpy us p50/p99':>20}{'onnxruntime us p50/p99':>26}{'sklearn us p50/p99':>22}"
    print(header)
    notes = []
    for name in CLASSIFIERS:
        trained = train_model(frame, 42, classifier=name)
        columns = list(trained.features)
        rows = trained.val.head(64)[columns]
        records = rows.to_dict("records")
        compiled = PipelineModel(trained.pipeline, columns)
        try:
            onnx: OnnxModel | None = OnnxModel(trained.pipeline, rows, columns)
        except ImportError as exc:
            onnx = None
            notes.append(f"{name}: onnxruntime/skl2onnx not installed ({exc})")
        except Exception as exc:  # skl2onnx has no converter for a step, or types it can't map
            onnx = None
            notes.append(f"{name}: skl2onnx can't convert it: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        reference = trained.pipeline.predict_proba(rows)[:, 1]
        numpy_diff = float(np.max(np.abs(compiled.predict_proba(records) - reference)))
        onnx_diff = float(np.max(np.abs(onnx.predict_proba(records) - reference))) if onnx else None
        path = "array path" if compiled.fast is not None else "falls back to the pipeline"
        notes.append(
            f"{name}: numpy {path}, max |p - sklearn| {numpy_diff:.1e}"
            + (f"; onnxruntime max |p - sklearn| {onnx_diff:.1e}" if onnx_diff is not None else "")
        )
        for size in BATCHES:
            batch, frame_batch = records[:size], rows.head(size)
            numpy_t = timed_us(lambda b=batch, m=compiled: m.predict_proba(b), CALLS)
            onnx_t = timed_us(lambda b=batch, m=onnx: m.predict_proba(b), CALLS) if onnx else None
            sklearn_t = timed_us(lambda f=frame_batch, p=trained.pipeline: p.predict_proba(f), max(50, CALLS // 10))
            onnx_cell = f"{onnx_t[0]:.0f} / {onnx_t[1]:.0f}" if onnx_t else "-"
            print(
                f"{name:<14}{size:>5}{f'{numpy_t[0]:.0f} / {numpy_t[1]:.0f}':>20}{onnx_cell:>26}"
                f"{f'{sklearn_t[0]:.0f} / {sklearn_t[1]:.0f}':>22}"
            )
    print("\n" + "\n".join(notes))


if __name__ == "__main__":
    main()
