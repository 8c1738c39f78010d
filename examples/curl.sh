#!/usr/bin/env bash
# Publishing to wshub with curl. Run it against a hub (./start.sh) with a client open at
# http://localhost:8080/ to watch the events arrive.
#   WSHUB_URL   hub base URL (default http://localhost:8080)
#   WSHUB_API_KEY  sent as "Authorization: Bearer ..." when set (required by a hub that has a key,
#               and by any hub for callers outside loopback)
set -euo pipefail

url=${WSHUB_URL:-http://localhost:8080}
auth=()
[[ -n ${WSHUB_API_KEY:-} ]] && auth=(-H "Authorization: Bearer $WSHUB_API_KEY")

notify() {
  curl -sS -X POST "$url/notify" -H 'Content-Type: application/json' "${auth[@]}" -d "$1"
  echo
}

# Broadcast to every connection. Answer: {"success":true,"id":"...","seq":N,"recipients":N}
notify '{"type":"tour_creado","message":"Nuevo tour disponible: Cenote Azul","data":{"tourId":"t-3","precio":1250.5}}'

# Targeted: the tabs of user 42 (JWT sub) plus every connection whose token has the role "admin".
notify '{"type":"reserva_creada","message":"Nueva reserva","data":{"reservaId":"r-7"},"user":"42","role":"admin"}'

# A channel that clients joined with {"type":"subscribe","channel":"ofertas"}; a list works too.
notify '{"type":"oferta","message":"2x1 en tours","channel":["ofertas","ofertas.cancun"]}'

# Batch: published in order, all or nothing; the answer is an array, one entry per event.
notify '[{"type":"paso","message":"1"},{"type":"paso","message":"2","user":"42"}]'

# Idempotent retry: the same key publishes once, however many times the request is sent.
curl -sS -X POST "$url/notify" -H 'Content-Type: application/json' "${auth[@]}" \
  -H 'Idempotency-Key: pago-9f2c' -d '{"type":"pago_recibido","data":{"pagoId":"9f2c"}}'
echo

# An error: 400 with {"error":"..."} naming the field.
curl -sS -w ' (HTTP %{http_code})\n' -X POST "$url/notify" -H 'Content-Type: application/json' \
  "${auth[@]}" -d '{"message":"sin tipo"}'
