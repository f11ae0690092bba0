"""Route an HTTP request to the worker that owns a user, by the raw key bytes.

Faust's ``app.table_route`` serialises the key with the *changelog topic's*
key serializer, which is JSON whatever the table's schema says: the key
``u3`` is hashed as ``"u3"`` (quotes included), so it lands on another
partition than the input records keyed ``u3`` (and the profile written from
them), and a request is answered by a worker that does not own the user
whenever two or more workers share the partitions. :func:`user_route` hashes
the UTF-8 bytes of the id, as the producers key the input topics.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

import faust
from faust.exceptions import SameNode
from faust.web import Request, Response, View

Handler = Callable[..., Awaitable[Response]]


def user_route(
    app: faust.App, table: Any, match_info: str = "user_id"
) -> Callable[[Handler], Handler]:
    """Decorate a view method: run it on the worker owning ``match_info``'s user."""

    def decorator(fun: Handler) -> Handler:
        @wraps(fun)
        async def get(view: View, request: Request, *args: Any, **kwargs: Any) -> Response:
            key = request.match_info[match_info].encode()
            try:
                # Bytes pass the changelog topic's serializer untouched.
                return await app.router.route_req(table.name, key, view.web, request)
            except SameNode:
                return await fun(view, request, *args, **kwargs)

        return get

    return decorator
