"""Serving a federated run's model with Ray Serve behind an OpenAI-compatible API.

Provenance first: a round is served only after its receipts verify, and every response names the
run, round and receipt hash that produced it. Ray Serve is imported only by :mod:`.app`.
"""

from fl_ray.serving.provenance import Provenance, ProvenanceError, verify_provenance

__all__ = ["Provenance", "ProvenanceError", "verify_provenance"]
