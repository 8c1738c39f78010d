"""A FastAPI endpoint for wshub webhooks, verified with the Standard Webhooks library.

    pip install fastapi uvicorn standardwebhooks
    WSHUB_WEBHOOK_SECRET=whsec_... uvicorn fastapi_receiver:app --port 9000
    wshub --webhook-url http://127.0.0.1:9000/wshub/webhooks --webhook-secret whsec_...
"""

import os

from fastapi import FastAPI, HTTPException, Request
from standardwebhooks import Webhook, WebhookVerificationError

# A raw (non-whsec_) secret is its bytes: Webhook(secret.encode()).
webhook = Webhook(os.environ["WSHUB_WEBHOOK_SECRET"])
app = FastAPI()
seen_ids: set[str] = set()  # use your database: delivery is at least once


@app.post("/wshub/webhooks", status_code=204)
async def wshub_webhook(request: Request) -> None:
    body = await request.body()  # the exact bytes: re-serialized JSON would not verify
    try:
        hook = webhook.verify(body, dict(request.headers))
    except WebhookVerificationError:
        raise HTTPException(status_code=401, detail="bad signature")
    hook_id = request.headers["webhook-id"]
    if hook_id in seen_ids:
        return  # a retry of a hook already handled: answer 2xx, do nothing
    seen_ids.add(hook_id)
    data = hook["data"]
    if hook["type"] == "user.offline":
        print(f"{data['user']} went offline (last seen {data['last_seen']})")
    elif hook["type"] == "user.online":
        print(f"{data['user']} is online with {data['connections']} connection(s)")
    elif hook["type"] == "notification.unread":
        print(f"email {data['user']}: {data['notification']['message']}")
