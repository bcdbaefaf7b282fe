"""The HTTP listener: an h11 session core (``session``), request processing in the spec's order
(``service``), client autoconfiguration (``autoconfig``, ``advertise``), forwarded client addresses
(``forwarded``) and banned paths (``paths``)."""
from .messages import Request, Response, problem
from .service import DEFAULT_ROUTES, HttpService
from .session import MAX_BODY, MAX_HEAD, HttpSession

__all__ = ["DEFAULT_ROUTES", "MAX_BODY", "MAX_HEAD", "HttpService", "HttpSession", "Request", "Response", "problem"]
