"""Pure online-learning code: no Faust, Kafka or Prometheus imports.

Every model here learns one event at a time and is asked for its prediction
before it learns from that event (progressive validation).
"""
