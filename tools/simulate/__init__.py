"""``feedback-stream simulate``: a simulated user population that closes the loop.

The users are the 610 MovieLens users (``../shared/data/movielens_latest_small``)
and their hidden preferences are learnt from their real ratings:

* an item the user really rated has preference ``0.05 + 0.9 * ((rating - 1) / 4) ** 2``
  (5 stars: 0.95, 4 stars: 0.56, 3 stars: 0.28);
* any other item gets ``0.25 * p ** 8``, where ``p`` is the item's percentile
  for that user under a rank-32 SVD of the user x item "rated" matrix (the
  user's top unrated items by taste about 0.2, a median item about 0.001);
* *intent* (``--intent-horizon H``, default 30): a rated movie ``d`` positions
  ahead of where the user now is in their real history has its preference
  scaled by ``0.3 + 0.7 * exp(-d / H)``: what they really watched next is what
  they want now, the same target as the prequential next-item hit rate of
  ``feedback-stream evaluate``. ``--intent-horizon 0`` turns it off (then any
  movie of their whole future is as wanted as the next one).

Users arrive with a past: a *warm-up* first replays, for every user, the first
half of their real history (at most ``--warmup-cap`` movies each) as reviews,
interleaved at random; the users already react to the recommendations published
meanwhile (so the service, and its bandit, have real feedback from the start),
but nothing of that phase is measured: the worker's counters are read once the
warm-up and its reactions are processed, and subtracted at the end. Without it
every user would start with an empty past, so that every blockbuster is still in
everybody's future, an artefact that flatters the popularity ranking.

Then they *browse on their own*: at each step one active user (uniformly at random)
watches and rates the next movie of their real, time-ordered MovieLens
history (a ``review`` with the real rating), skipping movies they already
bought through a recommendation. They *react to the recommendations* the service
publishes on the recommendations topic: scanning the list top-down, each item
is examined with probability ``examine ** rank`` (rank from 0) once the items
above it were (so the fourth is reached 38% of the times, the tenth almost never), clicked with
probability ``click_scale * preference`` (a tenth of that for an item they
clicked before; never one they bought), scanning stops at the first click, and
the click carries the ``recommendation_id`` (except for ``1 - id_share`` of
them, which the service must attribute by item and time window); a clicked item
is then bought with probability ``buy_scale * preference`` (one unit at a fixed
per-movie price; purchases never carry the id). Event times come from a
simulated clock: organic event ``j`` is at ``start + j * step`` seconds, a click
10 to 60 s after the recommendation's event time, a purchase 1 to 10 minutes
after the click. Every decision is drawn from generators seeded by ``--seed``
(a reaction by the seed and the recommendation id), so a run is reproducible up
to the order in which the broker interleaves messages.

By default it starts the embedded broker and one worker (as ``tools/demo.py``
does) configured with the experiment's variants (and ``FEEDBACK_BANDIT=1`` with
``--bandit``), runs for ``--duration`` seconds or ``--events`` organic events,
waits for the worker to drain, reads the worker's attribution metrics and prints
per-variant CTR and conversion with 95% Wilson intervals, the blend/popularity
CTR ratio with its interval and a z-test, and, with ``--bandit``, the share of
recommendations that went to the best strategy over the last quarter of the run.
With ``--bootstrap-servers`` it uses a running broker and worker instead
(``--metrics-url`` to read the worker's metrics; without it the figures are the
simulator's own counts of what it clicked).
"""

from tools.simulate.behaviour import START_TIME, Behaviour, Simulation, Tally
from tools.simulate.cli import DEFAULT_VARIANTS, build_parser, main
from tools.simulate.drivers import drive_broker, drive_in_process
from tools.simulate.metrics import (
    Counts,
    Samples,
    fetch_metrics,
    parse_metrics,
    subtract,
    sum_by,
    wait_drained,
)
from tools.simulate.population import Population
from tools.simulate.report import print_table, report

__all__ = [
    "DEFAULT_VARIANTS",
    "START_TIME",
    "Behaviour",
    "Counts",
    "Population",
    "Samples",
    "Simulation",
    "Tally",
    "build_parser",
    "drive_broker",
    "drive_in_process",
    "fetch_metrics",
    "main",
    "parse_metrics",
    "print_table",
    "report",
    "subtract",
    "sum_by",
    "wait_drained",
]
