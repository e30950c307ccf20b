"""Speed and accuracy of the demand forecast (amb/insight/forecast.py) against seasonal naive.

    python bench/bench_forecast.py [--quick] [--json PATH]

Places are synthetic hourly incident series with the simulator's shape (a daily curve scaled by
weekday, weekend nights busier, negative-binomial noise) at rates from 0.2 to 8 an hour (a small
district to a city), nine weeks each: eight of history and one held out. Figures, per second of
this process's CPU time: places forecast by the model (fit + 7-day forecast + intervals) against
the seasonal-naive baseline on the same series, and the backtest's MAE, MAPE and 80% interval
coverage of both. Places: 300 (about England's LADs; ``--quick``: 40).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from amb.insight import forecast as fc  # noqa: E402
from domain.metrics import HOUR_MS  # noqa: E402

START_MS = 1_785_106_800_000  # 2026-07-27 00:00 BST, a Monday


def synthetic(n_places: int, seed: int = 1) -> list[fc.HourlySeries]:
    rng = np.random.default_rng(seed)
    hours = np.arange(START_MS, START_MS + 9 * fc.WEEK_HOURS * HOUR_MS, HOUR_MS, dtype=np.int64)
    hour, weekday = fc.local_hour_weekday(hours)
    shape = (0.4 + np.sin(np.pi * np.clip(hour - 4, 0, 20) / 20) ** 2) * np.where(weekday == 0, 1.15, 1.0)
    shape *= np.where((weekday >= 5) & (hour < 4), 1.4, 1.0)
    out = []
    for i, rate in enumerate(np.geomspace(0.2, 8.0, n_places)):
        mu = rate * shape / shape.mean()
        k = 20.0  # negative binomial size: mild overdispersion
        counts = rng.negative_binomial(k, k / (k + mu)).astype(np.float64)
        out.append(fc.HourlySeries(f"P{i:03d}", hours, counts))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40 places instead of 300")
    parser.add_argument("--json", type=Path, help="write the figures as a JSON list to this path")
    args = parser.parse_args()
    n = 40 if args.quick else 300
    series = synthetic(n)
    fc.fit_predict(series[0].before(int(series[0].hours[-fc.WEEK_HOURS])), series[0].hours[-fc.WEEK_HOURS:])  # import

    t = time.process_time()
    result = fc.backtest(series, days=7, history_weeks=8)
    model_s = time.process_time() - t
    t = time.process_time()
    test_hours = series[0].hours[-fc.WEEK_HOURS:]
    for s in series:
        fc.seasonal_naive(s.before(int(test_hours[0]), 8), test_hours)
    naive_s = max(time.process_time() - t, 1e-9)

    load = os.getloadavg()[0]
    print(f"{n} places, 8 weeks of history, 7 days held out (load average {load:.1f})")
    print(f"{'method':<28}  {'places/s':>9}  {'mae':>6}  {'mape':>6}  {'coverage80':>10}")
    for name, rate, sc in (("model (GLM, NB intervals)", n / model_s, result.model),
                           ("seasonal naive (baseline)", n / naive_s, result.naive)):
        mape = "" if sc.mape is None else f"{100 * sc.mape:.1f}%"
        print(f"{name:<28}  {rate:>9,.0f}  {sc.mae:>6.3f}  {mape:>6}  {100 * sc.coverage:>9.1f}%")
    print(f"speed ratio model/baseline: {(n / model_s) / (n / naive_s):.3f}; "
          f"skill (1 - MAE ratio): {result.skill:+.3f}")
    if args.json:
        args.json.write_text(json.dumps([
            {"name": "forecast places/s (backtest: fit + 7 days)", "value": round(n / model_s, 1), "unit": "places/s",
             "baseline": "seasonal naive", "baseline_value": round(n / naive_s, 1)},
            {"name": "forecast MAE (7 days hourly)", "value": round(result.model.mae, 4), "unit": "incidents/h",
             "baseline": "seasonal naive", "baseline_value": round(result.naive.mae, 4)},
            {"name": "forecast 80% interval coverage", "value": round(result.model.coverage, 4), "unit": "share",
             "baseline": "seasonal naive", "baseline_value": round(result.naive.coverage, 4)},
        ], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
