"""FeedbackEngine: every model of the service behind one predict-then-learn call.

Placeholder module written by the lead so that `stream/` can be built against a
fixed interface; the models issue (#3) replaces the body with the real blend.
"""
