"""Figure helpers: every diverged run keeps its own mark, even when several diverge at the same step."""

from __future__ import annotations

import numpy as np

from samkit.experiments.plotting import divergence_marks, new_figure, plot_run, plt


def test_divergence_marks_are_distinct_and_between_the_bounds():
    marks = divergence_marks(4, 10.0, 1e6)
    assert len(set(marks)) == 4 and all(10.0 < m < 1e6 for m in marks) and marks == sorted(marks, reverse=True)
    assert divergence_marks(0, 1.0, 2.0) == []


def test_runs_diverging_at_the_same_step_get_one_labelled_mark_each():
    fig, axes = new_figure()
    ax = axes[0, 0]
    steps = np.arange(0, 100, 10)
    loss = 40.0 * np.exp(-steps / 30)
    marks = divergence_marks(3, 40.0, 1200.0)
    for i, (rho, k) in enumerate([(0.1, 3), (0.2, 3), (0.5, 2)]):
        plot_run(ax, steps, np.where(steps < k, loss, np.inf), diverged_at=k, mark=marks[i], label=f"ρ={rho}")
    plot_run(ax, steps, loss, diverged_at=-1, mark=1200.0, label="ρ=0.01")
    crosses = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert sorted((float(c.get_xdata()[0]), float(c.get_ydata()[0])) for c in crosses) == sorted(
        zip([3.0, 3.0, 2.0], marks)
    )
    assert sorted(t.get_text() for t in ax.texts) == [
        "ρ=0.1 diverged, t=3",
        "ρ=0.2 diverged, t=3",
        "ρ=0.5 diverged, t=2",
    ]
    labels = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert labels == ["ρ=0.1: diverged at t=3", "ρ=0.2: diverged at t=3", "ρ=0.5: diverged at t=2", "ρ=0.01"]
    # a diverged run is drawn up to its step only, then to its mark; the converged one in full
    dashed = ax.get_lines()[0]
    assert dashed.get_linestyle() == "--" and list(dashed.get_xdata()) == [0, 3] and dashed.get_ydata()[-1] == marks[0]
    assert len(ax.get_lines()[-1].get_xdata()) == len(steps)
    plt.close(fig)
