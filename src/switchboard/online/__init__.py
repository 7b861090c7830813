"""Learning from the user's own feedback while serving (docs/router.md, "Learning from feedback").

`OnlineLearner` keeps each tenant's scored answers and corrects the router's predicted quality near them
(`correction.py`: a kernel-weighted Bayesian recalibration; `exploration.py`: optimistic exploration aimed at the
least-tried experts, under a hard per-tenant budget).
The gateway feeds it from `POST /v1/feedback` and rebuilds it from the request log at start.
"""

from switchboard.online.learner import ANONYMOUS, Adjustment, FeedbackEvent, LearnOutcome, OnlineLearner

__all__ = ["ANONYMOUS", "Adjustment", "FeedbackEvent", "LearnOutcome", "OnlineLearner"]
