/**
 * useWebSocket: a React hook for wshub notifications (React is its only dependency).
 *
 *   const { state, lastEvent, send } = useWebSocket("/ws", {  // or "wss://hub.example.com/ws"
 *     token,                                   // JWT, sent as ?token= (optional)
 *     onMessage: (event) => toast(event.message),
 *   });
 *
 * - Reconnects after any close except a normal one (1000), an operator disconnect (4004) and a
 *   refused token (4001: it reconnects when the `token` option changes), with exponential backoff
 *   and full jitter: a random wait in [0, min(maxDelay, minDelay * 2^attempt)].
 * - Resumes: it remembers the hub's epoch and the last seq seen on the automatic streams
 *   (broadcast, user:*, role:*) and reconnects with ?epoch=&since=, so the hub replays what was
 *   missed while it was away (docs/PROTOCOL.md, "WebSocket: GET /ws").
 * - `state` is "connecting", "open", "reconnecting" or "closed"; `info` is the last hub:connected
 *   frame (client_id, user, role, channels, ...).
 * - `onMessage` gets notifications; `onControl` gets the hub's own frames (type "hub:...").
 *   Neither needs to be memoised: the latest callbacks are always used.
 */
import { useCallback, useEffect, useRef, useState } from "react";

const NO_RECONNECT = new Set([1000, 4001, 4004]);
const AUTOMATIC_STREAM = /^(broadcast$|user:|role:)/;

export function useWebSocket(url, options = {}) {
  const { token, onMessage, onControl, minDelay = 500, maxDelay = 30000, enabled = true } = options;
  const [state, setState] = useState("connecting");
  const [info, setInfo] = useState(null);
  const [lastEvent, setLastEvent] = useState(null);
  const socketRef = useRef(null);
  const callbacks = useRef({ onMessage, onControl });
  callbacks.current = { onMessage, onControl };
  const resume = useRef({ epoch: null, since: null });

  useEffect(() => {
    if (!enabled) {
      setState("closed");
      return undefined;
    }
    let attempt = 0;
    let timer = null;
    let stopped = false;

    const connect = () => {
      const target = new URL(url, window.location.href);
      target.protocol = target.protocol.replace(/^http/, "ws");
      if (token) target.searchParams.set("token", token);
      if (resume.current.epoch && resume.current.since !== null) {
        target.searchParams.set("epoch", resume.current.epoch);
        target.searchParams.set("since", String(resume.current.since));
      }
      const socket = new WebSocket(target);
      socketRef.current = socket;
      setState(attempt === 0 ? "connecting" : "reconnecting");

      socket.onmessage = (message) => {
        let frame;
        try {
          frame = JSON.parse(message.data);
        } catch {
          return;
        }
        if (frame.type === "hub:connected") {
          attempt = 0;
          setState("open");
          setInfo(frame);
          if (frame.epoch !== resume.current.epoch) {
            resume.current = { epoch: frame.epoch, since: frame.seq };
          }
        }
        if (frame.type.startsWith("hub:")) {
          callbacks.current.onControl?.(frame);
          return;
        }
        if (AUTOMATIC_STREAM.test(frame.channel) && frame.epoch === resume.current.epoch) {
          resume.current.since = Math.max(resume.current.since, frame.seq);
        }
        setLastEvent(frame);
        callbacks.current.onMessage?.(frame);
      };

      socket.onclose = (close) => {
        socketRef.current = null;
        if (stopped || NO_RECONNECT.has(close.code)) {
          setState("closed");
          return;
        }
        setState("reconnecting");
        const ceiling = Math.min(maxDelay, minDelay * 2 ** attempt);
        attempt += 1;
        timer = setTimeout(connect, Math.random() * ceiling);
      };
    };

    connect();
    return () => {
      stopped = true;
      clearTimeout(timer);
      socketRef.current?.close(1000);
    };
  }, [url, token, minDelay, maxDelay, enabled]);

  /** Send a client message (subscribe, unsubscribe, ping, ...); false when not connected. */
  const send = useCallback((message) => {
    const socket = socketRef.current;
    if (!socket || socket.readyState !== WebSocket.OPEN) return false;
    socket.send(JSON.stringify(message));
    return true;
  }, []);

  return { state, info, lastEvent, send };
}
