"""Names every component of tfsr shares, owned here and derived everywhere else.

The gate-weight axes fix the layout of the model's ``gate_weights [B, len(ENTITIES), len(ASPECTS)]``
output (the paper's Aspect Gating Fusion, §3.2): rows are the entities, columns the aspects of each
entity's features. Batch scoring, the serving client, the evaluation report and the feature spec read
them from here.
"""

ENTITIES: tuple[str, ...] = ("user", "query", "item")
ASPECTS: tuple[str, ...] = ("id", "text", "sparse")
