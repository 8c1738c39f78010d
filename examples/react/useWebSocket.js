/**
 * useWebSocket: a React hook for wshub notifications, built on the hub's own browser client
 * (`/wshub.mjs`, the ES-module form of `static/wshub.js`), so reconnects with backoff and jitter,
 * exact resume after a disconnect or a hub restart, dedupe and delivery receipts come from there.
 *
 *   const { state, lastEvent, missed, subscribe } = useWebSocket({
 *     hubUrl: "http://localhost:8080",      // where the hub serves /wshub.mjs and /ws
 *     token,                                // JWT (optional); a new token reconnects
 *     channels: ["service:12"],             // subscribed (and resumed) for you
 *     onMessage: (event) => toast(event.message),
 *   });
 *
 * - `state`: "connecting", "connected", "reconnecting" or "closed".
 * - `missed`: true once the hub said a gap could not be replayed (history too old, or the hub
 *   restarted without --data-dir): reload the page's data from your backend, then call
 *   `clearMissed()`.
 * - `onMessage` gets every notification once; it does not need to be memoised.
 *
 * The client is loaded from the hub with a dynamic import, so the app needs no copy of it; with a
 * bundler that forbids remote imports, copy static/wshub.js and static/wshub.mjs into the app and
 * import from there instead.
 */
import { useCallback, useEffect, useRef, useState } from "react";

export function useWebSocket(options = {}) {
  const { hubUrl = "", token = null, channels = [], onMessage, persist = "session", enabled = true } = options;
  const [state, setState] = useState("connecting");
  const [lastEvent, setLastEvent] = useState(null);
  const [missed, setMissed] = useState(false);
  const hubRef = useRef(null);
  const onMessageRef = useRef(onMessage);
  onMessageRef.current = onMessage;
  const channelKey = channels.join(",");

  useEffect(() => {
    if (!enabled) {
      setState("closed");
      return undefined;
    }
    let hub = null;
    let cancelled = false;
    const base = hubUrl.replace(/\/$/, "");
    import(/* webpackIgnore: true */ `${base}/wshub.mjs`).then(({ Wshub }) => {
      if (cancelled) return;
      const wsUrl = base ? base.replace(/^http/, "ws") + "/ws" : undefined;
      hub = new Wshub({ url: wsUrl, token, persist });
      hubRef.current = hub;
      hub.on("state", setState);
      hub.on("missed", () => setMissed(true));
      hub.on("*", (event) => {
        setLastEvent(event);
        if (onMessageRef.current) onMessageRef.current(event);
      });
      hub.connect();
      for (const channel of channelKey ? channelKey.split(",") : []) {
        hub.subscribe(channel).catch((err) => console.warn("wshub subscribe", channel, err));
      }
    });
    return () => {
      cancelled = true;
      if (hub) hub.close();
      hubRef.current = null;
    };
  }, [hubUrl, token, channelKey, persist, enabled]);

  const subscribe = useCallback((channel) => hubRef.current?.subscribe(channel), []);
  const unsubscribe = useCallback((channel) => hubRef.current?.unsubscribe(channel), []);
  const clearMissed = useCallback(() => setMissed(false), []);

  return { state, lastEvent, missed, clearMissed, subscribe, unsubscribe };
}
