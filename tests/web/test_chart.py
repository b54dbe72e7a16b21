"""``svg_chart``: well-formed SVG, points where the maths says, and graceful empty/degenerate input."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from tunery.store.models import JobMetric
from tunery.web.chart import MAX_POINTS, Series, fmt, job_series, nice_ticks, svg_chart

NS = {"svg": "http://www.w3.org/2000/svg"}


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # raises on malformed XML


def test_nice_ticks_are_round_and_cover_the_range() -> None:
    assert nice_ticks(0, 10, 6) == [0, 2, 4, 6, 8, 10]
    assert nice_ticks(1, 40, 6) == [0, 10, 20, 30, 40]
    # raw step (2.31 - 0.13) / 4 = 0.545 rounds up to 1.
    assert nice_ticks(0.13, 2.31, 5) == [0, 1, 2, 3]
    lo_hi = nice_ticks(3e-4, 3e-3, 5)
    assert lo_hi[0] <= 3e-4 and lo_hi[-1] >= 3e-3
    # A flat series still gets an axis around its value.
    flat = nice_ticks(2.0, 2.0)
    assert flat[0] < 2.0 < flat[-1]


def test_fmt_is_short() -> None:
    assert fmt(0) == "0" and fmt(2.5) == "2.5" and fmt(1234) == "1.23e+03" and fmt(0.003) == "0.003"
    assert fmt(1e-5) == "1.0e-5"


def test_points_land_where_the_scales_put_them() -> None:
    # x ticks 0..10 over [56, 624]; y ticks 0..2 over [264, 34] (bottom to top).
    svg = svg_chart([Series("train loss", [(0, 0.0), (10, 2.0)], color="#000")], width=640, height=300)
    root = parse(svg)
    line = root.find(".//svg:polyline", NS)
    assert line is not None
    (x0, y0), (x1, y1) = [tuple(map(float, p.split(","))) for p in line.attrib["points"].split()]
    assert (x0, y0) == (56.0, 264.0)
    assert (x1, y1) == (624.0, 34.0)


def test_right_axis_series_is_scaled_separately() -> None:
    svg = svg_chart([
        Series("loss", [(1, 2.0), (2, 1.0)], color="#111"),
        Series("learning rate", [(1, 1e-3), (2, 2e-3)], color="#222", axis="right"),
    ])
    root = parse(svg)
    lines = root.findall(".//svg:polyline", NS)
    assert len(lines) == 2
    lr_ys = [float(p.split(",")[1]) for p in lines[1].attrib["points"].split()]
    # The tiny learning rates span the plot height instead of hugging the loss axis's zero.
    assert max(lr_ys) - min(lr_ys) > 100
    assert "learning rate (right axis)" in svg


def test_markers_single_points_and_escaping() -> None:
    svg = svg_chart([Series("eval <loss>", [(5, 1.5)], color="#c00", markers=True)], title='a "b" & c')
    root = parse(svg)
    assert len(root.findall(".//svg:circle", NS)) == 1
    assert root.find(".//svg:polyline", NS) is None
    assert "eval &lt;loss&gt;" in svg and "<loss>" not in svg
    assert root.find("svg:title", NS).text == 'a "b" & c'


def test_empty_and_non_finite_input() -> None:
    empty = svg_chart([Series("train loss", [], color="#000")])
    assert "No metrics yet" in empty and parse(empty) is not None
    nan = svg_chart([Series("train loss", [(1, float("nan")), (2, float("inf"))], color="#000")])
    assert "No metrics yet" in nan
    ok = svg_chart([Series("train loss", [(1, float("nan")), (2, 1.0), (3, 0.5)], color="#000")])
    assert len(parse(ok).find(".//svg:polyline", NS).attrib["points"].split()) == 2


def test_long_runs_are_thinned_but_keep_both_ends() -> None:
    pts = [(i, 1.0 / (i + 1)) for i in range(5000)]
    root = parse(svg_chart([Series("train loss", pts, color="#000")]))
    coords = root.find(".//svg:polyline", NS).attrib["points"].split()
    assert len(coords) == MAX_POINTS
    # x ticks 0..5000 over [56, 624]: step 0 at 56.0, step 4999 at 56 + 568 * 4999 / 5000.
    assert coords[0].startswith("56.0,") and coords[-1].startswith("623.9,")


def test_accessible_description_summarises_each_series() -> None:
    root = parse(svg_chart([Series("train loss", [(1, 2.0), (9, 0.5)], color="#000")]))
    assert root.attrib["role"] == "img"
    assert root.find("svg:desc", NS).text == "train loss from 2 at step 1 to 0.5 at step 9."


def test_job_series_picks_train_eval_and_lr() -> None:
    rows = [JobMetric(step=1, values={"train/loss": 2.0, "train/learning_rate": 1e-3}),
            JobMetric(step=2, values={"train/loss": 1.5, "train/learning_rate": 5e-4}),
            JobMetric(step=2, values={"eval/loss": 1.7})]
    train, evals, lr, reward, eval_reward = job_series(rows)
    assert train.points == [(1, 2.0), (2, 1.5)]
    assert evals.points == [(2, 1.7)] and evals.markers
    assert lr.points == [(1, 1e-3), (2, 5e-4)] and lr.axis == "right"
    assert reward.points == eval_reward.points == []  # no reinforcement metrics: nothing drawn


def test_job_series_draws_a_reinforcement_jobs_rewards() -> None:
    rows = [JobMetric(step=0, values={"eval/reward": 0.1}),
            JobMetric(step=1, values={"train/loss": 0.0, "train/reward": 0.2, "train/learning_rate": 1e-3}),
            JobMetric(step=1, values={"eval/reward": 0.3})]
    *_, reward, eval_reward = job_series(rows)
    assert reward.points == [(1, 0.2)] and eval_reward.points == [(0, 0.1), (1, 0.3)]
    svg = svg_chart(job_series(rows))
    assert "train reward" in svg and "eval reward" in svg
