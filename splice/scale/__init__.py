"""Scale out on Ray (`pip install "splice[ray]"`): one concept per module.

`cluster` (joining a Ray cluster, or starting a local one), `captioning` (batch captioning on Ray Data: an actor pool,
sharded resumable output; `splice caption --ray`) and `serving` (the `splice serve` app as a Ray Serve deployment with
replicas; `splice serve --replicas N`) and `datastore` (a datastore's captions embedded by a Ray Data actor pool;
`splice datastore build --ray`). Ray is imported only when one of them runs.
"""
