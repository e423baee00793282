"""An OpenAI-compatible HTTP server over one engine (extra ``server``): ``embellama serve``.

:func:`~embellama.server.app.create_app` builds the ASGI app, :func:`~embellama.server.app.serve` runs it; see
:mod:`embellama.server.app` for the modules it is made of.
"""
