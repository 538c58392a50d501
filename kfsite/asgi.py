import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kfsite.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402 — needs Django set up first

from accounts.channels_auth import KfAuthMiddlewareStack  # noqa: E402
from api.tasking import start_local_beat  # noqa: E402

websocket_urlpatterns: list = []

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": KfAuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
    }
)

start_local_beat()
