/*
 * wshub-sw.js — the service worker for wshub's Web Push fallback (docs/PUSH.md).
 *
 * Serve it from your app's own origin (a service worker only controls its origin), e.g. copy it
 * to your static root, and pass its URL to hub.enablePush({ serviceWorker: '/wshub-sw.js' }).
 * The hub serves a copy at /wshub-sw.js.
 *
 * A push carries {id, type, title, body, url, tag, data}. It is shown as a notification (a later
 * one with the same tag replaces the earlier one); a click focuses a tab already on `url` or
 * opens it.
 */
self.addEventListener('push', function (event) {
  var d = {};
  try { d = event.data ? event.data.json() : {}; } catch (e) { d = { body: event.data ? event.data.text() : '' }; }
  var options = {
    body: d.body || '',
    data: { url: d.url || '/', id: d.id, type: d.type, data: d.data },
  };
  if (d.tag) { options.tag = d.tag; options.renotify = true; }
  event.waitUntil(self.registration.showNotification(d.title || d.type || 'Notification', options));
});

self.addEventListener('notificationclick', function (event) {
  event.notification.close();
  var url = new URL((event.notification.data && event.notification.data.url) || '/', self.location.origin).href;
  event.waitUntil(self.clients.matchAll({ type: 'window', includeUncontrolled: true }).then(function (tabs) {
    for (var i = 0; i < tabs.length; i++) {
      if (tabs[i].url === url && 'focus' in tabs[i]) return tabs[i].focus();
    }
    return self.clients.openWindow(url);
  }));
});
