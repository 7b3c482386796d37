// Package pusherapi is the Pusher Channels HTTP API of a herald.Node: the
// routes /apps/{app_id}/… that the Pusher server SDKs call, each request
// signed with the app's secret as Pusher defines it (VerifyRequest), and
// the webhooks in Pusher's format (X-Pusher-Key, X-Pusher-Signature). It
// is built on the node's exported methods, like package httpapi; herald
// serve mounts it at /apps/ when Pusher apps are configured. See
// docs/pusher.md.
package pusherapi
