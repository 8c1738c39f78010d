"""A Django view for wshub webhooks, verified with the Standard Webhooks library.

In a project, put `wshub_webhook` in a views.py and route it in urls.py; this file is also a
complete one-file Django site to try it:

    pip install django standardwebhooks
    WSHUB_WEBHOOK_SECRET=whsec_... python django_receiver.py runserver 9000
    wshub --webhook-url http://127.0.0.1:9000/wshub/webhooks --webhook-secret whsec_...
"""

import os
import sys

from django.conf import settings

if not settings.configured:  # one-file site; drop this block inside a real project
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        ROOT_URLCONF=__name__,
        SECRET_KEY="only-for-this-example",
    )

from django.http import HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402
from django.views.decorators.http import require_POST  # noqa: E402
from standardwebhooks import Webhook, WebhookVerificationError  # noqa: E402

# A raw (non-whsec_) secret is its bytes: Webhook(secret.encode()).
webhook = Webhook(os.environ["WSHUB_WEBHOOK_SECRET"])
seen_ids: set[str] = set()  # use your database: delivery is at least once


@csrf_exempt  # the signature, not a CSRF token, proves the sender
@require_POST
def wshub_webhook(request):
    try:
        hook = webhook.verify(request.body, dict(request.headers))
    except WebhookVerificationError:
        return HttpResponse("bad signature", status=401)
    hook_id = request.headers["webhook-id"]
    if hook_id in seen_ids:
        return HttpResponse(status=204)  # a retry of a hook already handled
    seen_ids.add(hook_id)
    data = hook["data"]
    if hook["type"] == "user.offline":
        print(f"{data['user']} went offline (last seen {data['last_seen']})")
    elif hook["type"] == "user.online":
        print(f"{data['user']} is online with {data['connections']} connection(s)")
    elif hook["type"] == "notification.unread":
        print(f"email {data['user']}: {data['notification']['message']}")
    return HttpResponse(status=204)


urlpatterns = [path("wshub/webhooks", wshub_webhook)]

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
