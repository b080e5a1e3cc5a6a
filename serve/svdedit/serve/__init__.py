"""svdedit.serve: editing as a service (extra `svdedit[serve]`; Ray Serve with `svdedit[ray]`).

    settings.py   every setting: limits, dynamic batching, the attribute store
    service.py    the model work without HTTP: checked edit jobs, batches of them, learn, generate
    store.py      the attribute store: a folder of attribute files, ids from their content
    batching.py   dynamic batching for the one-process server (uvicorn)
    models.py     the HTTP API's bodies, and how each becomes the runtime's request value
    backend.py    who runs the work behind the routes: the interface, and the one-process backend (uvicorn)
    errors.py     every error answered in one shape, the field named as the API names it
    app.py        the HTTP API (FastAPI): routes, error handlers, request limits, the web page (static/)
    metrics.py    Prometheus metrics
    ray_app.py    the same app as a Ray Serve deployment, batching with @serve.batch
    run.py        starting either (svdedit serve)
"""
