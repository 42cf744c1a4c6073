"""Declaration layer: regions, layouts, connections, topologies, schemas, the attention-type vocabulary."""

