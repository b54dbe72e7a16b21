"""The web dashboard: server-rendered pages (Jinja2), one stylesheet, a little vanilla JavaScript.

``routes.router`` is included by ``tunery.app.create_app``; pages sign in with an API key
(``auth``), read the store like the API does (``views``) and draw the loss chart (``chart``).
"""
