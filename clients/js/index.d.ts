// Type declarations for @heraldhq/client, written by hand to match index.js.
// The wire protocol is herald.v1 (PROTOCOL.md in the Herald repository).

/** The WebSocket subprotocol this client speaks. */
export declare const SUBPROTOCOL: 'herald.v1';

/** Error codes the server sends (see PROTOCOL.md, "Error codes"). */
export type ServerErrorCode =
  | 'bad_request'
  | 'unknown_command'
  | 'bad_channel'
  | 'already_subscribed'
  | 'not_subscribed'
  | 'not_enabled'
  | 'unauthorized'
  | 'permission_denied'
  | 'rate_limited'
  | 'limit_exceeded'
  | 'too_large'
  | 'unavailable'
  | 'internal';

/**
 * Codes of the client's own failures: "timeout" (no reply in time),
 * "disconnected" (no connection, or it was lost before the reply) and
 * "unsubscribed" (Subscription.ready of a subscription ended, by the app or
 * by the server, before it was subscribed). subscribe() throws
 * "already_subscribed" for a channel the client already has a Subscription
 * for. A request that the server's rate limit held back until its timeout
 * rejects with "rate_limited", as the server says it.
 */
export type ClientErrorCode = 'timeout' | 'disconnected' | 'unsubscribed';

/** A failed request: a server error reply, or a failure of the client's own. */
export declare class HeraldError extends Error {
  constructor(code: string, message: string);
  readonly name: 'HeraldError';
  /** The code to switch on; a newer server may send codes not listed here. */
  readonly code: ServerErrorCode | ClientErrorCode | (string & {});
  /**
   * On a failed publish that carried an idempotency key (its own or the
   * automatic one): the key. Publishing again with it within the server's
   * window (2 minutes by default) cannot publish twice.
   */
  idempotencyKey?: string;
}

/** Any JSON value. */
export type JSONValue = string | number | boolean | null | JSONValue[] | { [key: string]: JSONValue };

/** A payload as received: a JSON value (text frame) or bytes (binary frame). */
export type Payload = JSONValue | Uint8Array;

/** What publish() accepts: bytes travel in a binary frame, anything else as JSON. */
export type PublishData = JSONValue | Uint8Array | ArrayBuffer | ArrayBufferView;

/** A position in a channel's history: an offset means something only with its epoch. */
export interface Position {
  offset: number;
  epoch: string;
}

/** The minimal WebSocket this client needs (the browser's, Node's, or the ws package's). */
export interface WebSocketLike {
  binaryType: string;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: any }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: any) => void) | null;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface HeraldOptions {
  /** Sent in the connect command of the first attempt. */
  token?: string;
  /**
   * Called for a fresh token before every reconnect attempt (and before the
   * first one when no token is given). A rejection counts as a failed attempt.
   */
  getToken?: () => string | Promise<string>;
  /**
   * Sent as "data" in the connect command, for the server's connect hook
   * (the application's backend): a JSON value, or a function called before
   * every attempt (a rejection, or a value that is not JSON, counts as a
   * failed attempt). undefined sends none. The hook's answer comes back in
   * the connected state event's data.
   */
  connectData?: JSONValue | (() => JSONValue | undefined | Promise<JSONValue | undefined>);
  /** Milliseconds for each request's reply and for each connection attempt. Default 10000. */
  timeout?: number;
  /**
   * Reconnect delays, in milliseconds: the k-th retry after a loss waits a
   * random time between 0 and min(max, min·2^k) (full jitter). Default {min: 500, max: 20000}.
   */
  backoff?: { min?: number; max?: number };
  /** The WebSocket class to use. Default: globalThis.WebSocket, else the ws package. */
  WebSocket?: WebSocketConstructor;
  /**
   * Safe publish retries. By default (true) every publish carries an
   * idempotency key (the caller's, else a random one) and is retried with it
   * when its outcome is unknown: answered "unavailable", or the connection
   * lost before the reply (retried once reconnected), for up to window ms
   * from the call (default 60000; keep it well inside the server's
   * idempotency window, 2 minutes by default). false: no automatic key and
   * no such retries (rate_limited answers are still retried: they mean that
   * nothing was done). Per call: PublishOptions.retry.
   */
  publishRetry?: boolean | { window?: number };
  /**
   * Applies a fossil delta: `import { applyDelta } from 'fossil-delta'`.
   * Needed by subscriptions with SubscribeOptions.delta; injected so that
   * the client stays one module without imports.
   */
  applyDelta?: (base: Uint8Array, delta: Uint8Array) => Uint8Array;
  /**
   * Server-Sent Events, for receiving where a WebSocket cannot connect.
   * false (default): WebSocket only. true: SSE only. 'fallback': SSE once a
   * WebSocket attempt fails without opening, if none has opened since
   * connect() (until connect() is called again). Over SSE the client is receive-only: subscriptions, messages,
   * join/leave, recovery and onRecoveryFailed work as over a WebSocket, but
   * publish, rpc, history, presence and ping reject with code
   * "receive_only" (publish over the HTTP API, or a WebSocket).
   */
  sse?: boolean | 'fallback';
  /** The SSE endpoint. Default: the url's, ws(s)://host/ws -> http(s)://host/sse. */
  sseUrl?: string;
  /** The EventSource class to use. Default: globalThis.EventSource (in Node: pass the eventsource package's). */
  EventSource?: new (url: string) => any;
}

export type ConnectionState = 'connecting' | 'connected' | 'disconnected';

export type StateEvent =
  | { state: 'connecting'; /** failed attempts since the last connection (0 for the first) */ attempt: number }
  | {
      state: 'connected';
      clientId: string | null;
      /** The server's connect hook's data for this connection, when it gave any. */
      data?: JSONValue;
    }
  | {
      state: 'disconnected';
      /** The close code; 1006 when the connection failed or the client dropped it (timeouts). */
      code: number;
      reason: string;
      /** Whether the client will try again by itself. */
      reconnect: boolean;
      /** Milliseconds until the next attempt, when reconnect is true. */
      delay?: number;
    };

/** Why the server ended a subscription (an unsub push): Subscription onUnsubscribed. */
export interface UnsubscribeInfo {
  /**
   * "server_unsubscribe": the server application unsubscribed the user or
   * this client (HTTP API unsubscribe_user, unsubscribe_client).
   * "not_restored": a server-side subscription that the server did not make
   * again on a new connection (the application no longer grants it).
   */
  code: 'server_unsubscribe' | 'not_restored' | (string & {});
  /** For humans. */
  reason: string;
}

/** A client in presence results and join/leave pushes. */
export interface ClientInfo {
  client: string;
  /** Absent for anonymous clients. */
  user?: string;
  info?: JSONValue;
}

export interface MessageContext {
  channel: string;
  /** The publication's offset, on a channel with history. */
  offset?: number;
  /** True when data came in a binary frame (data is then a Uint8Array). */
  binary: boolean;
}

/** The result of a (re)subscribe. */
export interface SubscribeResult {
  /** On a channel with history: its last offset (absent when 0) and its epoch. */
  offset?: number;
  epoch?: string;
  /** Present when the subscribe asked to recover (a resubscribe, or options.since). */
  recovered?: boolean;
  reason?: 'epoch_changed' | 'too_old' | 'no_history' | (string & {});
  /** The server sends this subscription deltas (SubscribeOptions.delta, granted). */
  delta?: boolean;
}

/** A Subscription's callbacks: SubscribeOptions, or Subscription.setHandlers. */
export interface SubscriptionHandlers<T = Payload> {
  /** A publication on the channel: T is what the app expects, not checked. */
  onMessage?: (data: T, ctx: MessageContext) => void;
  /** A client subscribed (namespaces with join/leave; you see your own join too). */
  onJoin?: (info: ClientInfo) => void;
  /** A client unsubscribed or disconnected. */
  onLeave?: (info: ClientInfo) => void;
  /**
   * A resubscribe could not deliver what was missed: reload your state,
   * then go on from the new position (already tracked).
   */
  onRecoveryFailed?: (reason: 'epoch_changed' | 'too_old' | 'no_history' | (string & {}), result: SubscribeResult) => void;
  /**
   * The server dropped publications of the channel because this client read
   * too slowly (a namespace with overflow drop_oldest), called in their place:
   * exactly which offsets were lost. Read them with history({since}) if they
   * matter; the subscription's position is already past them.
   */
  onDropped?: (info: DroppedInfo) => void;
  /** Every successful subscribe and resubscribe. */
  onSubscribed?: (result: SubscribeResult) => void;
  /** The server refused the subscription for good (e.g. bad_channel); it has ended. */
  onError?: (error: HeraldError) => void;
  /**
   * The server ended the subscription (e.g. the HTTP API's unsubscribe_user):
   * its state is now "unsubscribed", and the client does not resubscribe it,
   * now or after a reconnect. Not called for the app's own unsubscribe().
   */
  onUnsubscribed?: (info: UnsubscribeInfo) => void;
}

export interface SubscribeOptions<T = Payload> extends SubscriptionHandlers<T> {
  /** Start from this position: the first subscribe then recovers what followed it. */
  since?: Position;
  /** A subscription token, for channels that need one; sent with every (re)subscribe. */
  token?: string;
  /**
   * Ask for publications as fossil deltas where the channel's namespace
   * sends them (`delta: fossil`, WebSocket only). onMessage still gets full
   * payloads; a delta on a base the client does not hold makes it
   * resubscribe from its position. Needs HeraldOptions.applyDelta.
   */
  delta?: boolean;
}

/** What a dropped push says (see SubscriptionHandlers.onDropped). */
export interface DroppedInfo {
  channel: string;
  /** How many publications were dropped. */
  count: number;
  /** The dropped offsets as inclusive [from, to] ranges, ascending; empty without history. */
  offsets: Array<[number, number]>;
}

export interface PublishOptions {
  /**
   * Conflation key: in a namespace with overflow conflate, a slow subscriber
   * keeps only the newest publication per channel and key.
   */
  key?: string;
  /**
   * Publish at most once per channel and key within the server's window (2
   * minutes by default). Without one, a publish with retries gets a random key.
   */
  idempotencyKey?: string;
  /**
   * false: no automatic key and no retry after "unavailable" or a lost
   * connection, for this publish. Default: HeraldOptions.publishRetry.
   */
  retry?: boolean;
}

/** Empty on a channel without history. */
export interface PublishResult {
  offset?: number;
  epoch?: string;
  /**
   * The key was seen before: nothing was published this time. An earlier
   * attempt of this publish (one whose reply was lost), or an earlier publish
   * with the same key, was: offset and epoch are its.
   */
  duplicate?: boolean;
}

export interface HistoryOptions {
  /** At most this many publications (absent: all that are kept). */
  limit?: number;
  /** Only the publications after this position. */
  since?: Position;
  /** Newest first. */
  reverse?: boolean;
}

export type HistoryPublication =
  | { offset: number; data: JSONValue; binary: false }
  | { offset: number; data: Uint8Array; binary: true };

export interface HistoryResult {
  publications: HistoryPublication[];
  /** The channel's current position. */
  offset: number;
  epoch: string;
}

export interface PresenceResult {
  /** Present clients by client id. */
  clients: Record<string, ClientInfo>;
}

export interface PresenceStats {
  /** Connections present. */
  clients: number;
  /** Distinct user ids among them (anonymous clients are not counted). */
  users: number;
}

/** A client of one Herald server. */
export declare class Herald {
  constructor(url: string, options?: HeraldOptions);
  readonly url: string;
  /** This connection's id (from the connect reply); null while not connected. */
  readonly clientId: string | null;
  readonly state: ConnectionState;
  /** The transport in use: 'sse' is receive-only (see HeraldOptions.sse). */
  readonly transport: 'websocket' | 'sse';

  /**
   * Connects, then keeps the connection up (reconnecting with backoff) until
   * disconnect() or a final close code (1008, 4500-4999; 4007, rate limited,
   * reconnects). Resolves once
   * connected; rejects if the client gives up first, with the server's error
   * reply to connect if there was one (e.g. "unauthorized"), else with
   * "disconnected".
   */
  connect(): Promise<void>;
  /** Closes the connection and stops reconnecting; outstanding requests reject with "disconnected". */
  disconnect(): void;

  on(event: 'state', listener: (event: StateEvent) => void): () => void;
  /** A message the server sent to this connection directly (not through a channel). */
  on(event: 'message', listener: (data: Payload, ctx: { binary: boolean }) => void): () => void;
  /**
   * The server subscribed this client to a channel it had no Subscription
   * for (a server-side subscription: its connect hook, or its API's
   * subscribe_user / subscribe_client). sub.serverSide is true; give it its
   * callbacks here with sub.setHandlers: the listener runs before any of
   * the channel's publications. A reconnect does not subscribe to it again:
   * the server makes it again (recovering what was missed, onSubscribed /
   * onRecoveryFailed) or ends it (onUnsubscribed, code "not_restored").
   */
  on(event: 'subscription', listener: (sub: Subscription, result: SubscribeResult) => void): () => void;
  off(event: 'state' | 'message' | 'subscription', listener: (...args: any[]) => void): void;

  /** Subscribes now if connected, and again after every reconnect. Throws if channel already has a Subscription. */
  subscribe<T = Payload>(channel: string, options?: SubscribeOptions<T>): Subscription<T>;
  getSubscription(channel: string): Subscription | null;

  /**
   * Resolves with the result; rejects with a HeraldError (err.idempotencyKey
   * set when the publish had a key): a server error, "timeout" (an attempt
   * got no reply in time: the outcome is unknown), or, once retries are
   * exhausted, the last "unavailable", "disconnected" or "rate_limited".
   */
  publish(channel: string, data: PublishData, options?: PublishOptions): Promise<PublishResult>;
  history(channel: string, options?: HistoryOptions): Promise<HistoryResult>;
  presence(channel: string): Promise<PresenceResult>;
  presenceStats(channel: string): Promise<PresenceStats>;
  /**
   * Calls method of the application's backend (the server's RPC hook) with
   * data, over this connection. Resolves with the backend's answer, T being
   * what the app expects (not checked); undefined when it gave none. Rejects
   * with a HeraldError: the backend's refusal with its code (the
   * application's own codes included), "not_enabled" (no RPC backend),
   * "unavailable" (the backend failed or timed out), "timeout",
   * "disconnected"; with a TypeError for an empty method or data that is not
   * JSON. Not retried (except "rate_limited"): after "disconnected",
   * "timeout" or "unavailable" the backend may or may not have acted.
   */
  rpc<T = JSONValue>(method: string, data?: JSONValue): Promise<T | undefined>;
  /** An application-level round trip. */
  ping(): Promise<void>;
}

/** A subscription to one channel; it survives reconnects. */
export declare class Subscription<T = Payload> {
  readonly client: Herald;
  readonly channel: string;
  readonly state: 'subscribing' | 'subscribed' | 'unsubscribed';
  /** The offset of the last publication received (or of the subscribe result), on a channel with history. */
  readonly offset: number | undefined;
  readonly epoch: string | undefined;
  /**
   * Made by the server (a subscribe push) rather than by subscribe(); a
   * Subscription of the app's own becomes server-side when the server
   * subscribes the client to its channel too. On a reconnect the client
   * names it in connect's subs instead of subscribing to it.
   */
  readonly serverSide: boolean;
  /**
   * Settles with the first subscribe: resolves with its result, or rejects
   * with the server's error, "unsubscribed", or "disconnected" when the
   * client gives up before subscribing.
   */
  readonly ready: Promise<SubscribeResult>;
  publish(data: PublishData, options?: PublishOptions): Promise<PublishResult>;
  unsubscribe(): Promise<void>;
  /** Sets the callbacks given, replacing those of the same names; returns this. */
  setHandlers(handlers: SubscriptionHandlers<T>): this;
}

export default Herald;
