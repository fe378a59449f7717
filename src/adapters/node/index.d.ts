// Type declarations for the `pthost` package: the Pluggable Transports 2.0 JavaScript interface
// (PT 2.0 draft 1 §3.2.5) over a pthost child process. spec/adapters.md, JavaScript section.

/// <reference types="node" />

import { EventEmitter } from 'node:events';
import { Duplex, DuplexOptions } from 'node:stream';
import * as net from 'node:net';

/** A pthost configuration (spec/ipc.md §3.2) without `role`, `state` or `exit-on-stdin-close`. */
export interface Configuration {
  transports: string[];
  options?: Record<string, unknown>;
  ptversion?: string;
  loglevel?: 'error' | 'warning' | 'notice' | 'info' | 'debug' | 'trace' | 'none';
  plugindir?: string;
  /** Client: where each SOCKS5 front end listens. */
  proxylistenaddr?: string | Record<string, string>;
  /** Client: an upstream proxy URI. */
  proxy?: string;
  /**
   * Client: the TURN front end (spec/turn.md §2). Absent: the adapter adds one with fresh
   * credentials; `false`: none (createUDPSocket then fails).
   */
  turn?: { listenaddr?: string; realm: string; users: Record<string, string> } | false;
  /** Server: where the server transport listens. */
  bindaddr?: Record<string, string>;
  /** Free server (createProxy): destinations pthost may reach (spec/ipc.md §3.4). */
  allow?: string[];
  [key: string]: unknown;
}

/** The adapter's own options (not pthost's). */
export interface AdapterOptions {
  /** pthost executable; default $PTHOST_EXE, else `pthost` on PATH. */
  executable?: string;
  /** Environment of the child; default process.env. */
  env?: NodeJS.ProcessEnv;
  /** 'inherit': copy pthost's stderr to this process's stderr; default: kept for error messages. */
  stderr?: 'pipe' | 'inherit';
  /** true: pthost in a session of its own (a terminal's Ctrl-C then reaches the application only). */
  setsid?: boolean;
}

export interface Address {
  host: string;
  port: number;
}

/** One transport's STATUS counters (spec/ipc.md §4.7). */
export interface TransportStats {
  connections: number;
  opened: number;
  failed: number;
  bytesIn: number;
  bytesOut: number;
}

export type Stats = Record<string, TransportStats>;

/** Errors the adapter reports; `code` says which (spec/adapters.md, "Errors"). */
export interface PtHostError extends Error {
  code:
    | 'ERR_PTHOST_CONFIG' | 'ERR_PTHOST_STATE' | 'ERR_PTHOST_EXIT' | 'ERR_PTHOST_METHOD' | 'ERR_PTHOST_CLOSED'
    | 'ERR_PTHOST_USAGE' | 'ERR_PTHOST_NO_TURN' | 'ETIMEDOUT' | string;
  /** ERR_PTHOST_CONFIG: the configuration key pthost named. */
  key?: string;
  /** ERR_PTHOST_METHOD: the transport and pthost's reason. */
  transport?: string;
  reason?: string;
  exitCode?: number | null;
  signal?: NodeJS.Signals | null;
  /** pthost's stderr (the last 64 KiB) for start-up errors. */
  stderr?: string;
}

/** A socket's 'error' after a SOCKS5 failure reply: `code` from socksReplyCodes. */
export interface SocksError extends Error {
  code: string;
  socksReply: number;
  syscall: 'connect';
  address: string;
  port: number;
}

/** The pthost child process behind connectors and servers. */
export interface PtHostProcess extends EventEmitter {
  readonly pid: number | undefined;
  readonly role: 'client' | 'server';
  readonly state: 'starting' | 'ready' | 'closing' | 'exited';
  readonly error: PtHostError | null;
  readonly stderrText: string;
  ready(): Promise<void>;
  close(callback?: (err: Error | null) => void): void;
  ref(): void;
  unref(): void;
  on(event: 'line', listener: (line: string) => void): this;
  on(event: 'log', listener: (log: { severity: string; message: string }) => void): this;
  on(event: 'stderr', listener: (text: string) => void): this;
  on(event: 'ready', listener: () => void): this;
  on(event: 'exit', listener: (code: number | null, signal: NodeJS.Signals | null) => void): this;
  on(event: 'error', listener: (err: PtHostError) => void): this;
  on(event: string | symbol, listener: (...args: any[]) => void): this;
}

/**
 * The seed's `signals`: a Duplex of messages. Readable: the CMESSAGE/SMESSAGE lines this side's
 * pthost wrote (one string with its LF per chunk). Writable: lines from the other side (bytes or
 * strings, split at LF). Link two adapters with `a.pipe(b); b.pipe(a)`.
 */
export class Signals extends Duplex {
  constructor(options?: DuplexOptions);
}

export function createSignals(): Signals;

export interface ConnectionOptions {
  /** The SOCKS5 destination: the PT server (bound transport) or the final destination (free). */
  host?: string;
  port?: number;
  allowHalfOpen?: boolean;
  noDelay?: boolean;
  keepAlive?: boolean;
  keepAliveInitialDelay?: number;
  timeout?: number;
  signal?: AbortSignal;
  [key: string]: unknown;
}

export interface UDPSocketOptions {
  type: 'udp4' | 'udp6';
  /** Period of the allocation, permission and channel refreshes in ms (default: from the lifetimes; for tests). */
  refreshInterval?: number;
}

/** The socket createConnection returns: net.Socket, plus the SOCKS5 reply's bound address. */
export type PtSocket = net.Socket & { socksBoundAddress?: Address };

/** dgram.Socket's surface, carried over TURN (RFC 5766) by pthost. */
export class TurnSocket extends EventEmitter {
  readonly type: 'udp4' | 'udp6';
  /** Refreshes answered so far (allocation, permission + channel). */
  readonly refreshes: number;
  bind(callback?: () => void): this;
  bind(port?: number, address?: string, callback?: () => void): this;
  /** The relayed address: where peers see this socket. */
  address(): { address: string; family: string; port: number };
  connect(port: number, address?: string, callback?: () => void): void;
  connect(port: number, callback: () => void): void;
  disconnect(): void;
  remoteAddress(): { address: string; family: string; port: number };
  send(msg: string | Uint8Array | ReadonlyArray<string | Uint8Array>, port?: number, address?: string, callback?: (error: Error | null, bytes: number) => void): void;
  send(msg: string | Uint8Array | ReadonlyArray<string | Uint8Array>, port?: number, callback?: (error: Error | null, bytes: number) => void): void;
  send(msg: string | Uint8Array, offset: number, length: number, port?: number, address?: string, callback?: (error: Error | null, bytes: number) => void): void;
  close(callback?: () => void): this;
  ref(): this;
  unref(): this;
  setRecvBufferSize(size: number): void;
  setSendBufferSize(size: number): void;
  getRecvBufferSize(): number;
  getSendBufferSize(): number;
  on(event: 'message', listener: (msg: Buffer, rinfo: { address: string; family: string; port: number; size: number }) => void): this;
  on(event: 'listening' | 'close' | 'connect', listener: () => void): this;
  on(event: 'error', listener: (err: Error) => void): this;
  on(event: string | symbol, listener: (...args: any[]) => void): this;
}

/** The seed's Connector and UDPConnector, for one transport of a pthost client. */
export class Connector extends EventEmitter {
  /** The transport's name. */
  readonly name: string;
  readonly process: PtHostProcess;
  /** pthost's SOCKS5 / TURN address for this transport, once ready. */
  readonly address: Address | null;
  readonly turnAddress: Address | null;
  /** What keeps this transport from working (CMETHOD-ERROR, start-up error, exit), or null. */
  readonly error: PtHostError | null;
  /** true: the address given to createConnection names the PT server; false: the final destination. */
  isBound(): boolean;
  /**
   * A real net.Socket; 'connect' comes after pthost's SOCKS5 success reply, whose BND.ADDR and
   * BND.PORT are then the socket's `socksBoundAddress`.
   */
  createConnection(settings: Record<string, unknown> | null, options?: ConnectionOptions, connectListener?: () => void): PtSocket;
  createConnection(settings: Record<string, unknown> | null, connectListener: () => void): PtSocket;
  createUDPSocket(options?: 'udp4' | 'udp6' | UDPSocketOptions, callback?: (msg: Buffer, rinfo: { address: string; family: string; port: number; size: number }) => void): TurnSocket;
  ready(): Promise<{ name: string; address: Address; turn: Address | null }>;
  /** Latest counters (at most 1 s old); with a callback, asked for now. */
  getStats(): TransportStats;
  getStats(callback: (err: Error | null, stats: TransportStats | undefined) => void): void;
  /** Stops the pthost process (shared by every connector of one createConnector call). */
  close(callback?: (err: Error | null) => void): void;
  on(event: 'ready', listener: () => void): this;
  on(event: 'exit', listener: (code: number | null, signal: NodeJS.Signals | null) => void): this;
  on(event: 'error', listener: (err: PtHostError) => void): this;
  on(event: string | symbol, listener: (...args: any[]) => void): this;
}

export type Connectors = Connector[] & {
  readonly process: PtHostProcess;
  readonly signals: Signals;
  ready(): Promise<Array<{ name: string; address: Address | null; turn: Address | null; error: PtHostError | null }>>;
  close(callback?: (err: Error | null) => void): void;
  getStats(): Stats;
  getStats(callback: (err: Error | null, stats: Stats) => void): void;
};

/** The seed's createConnector(configuration, localStorage, signals) → [Connector]. */
export function createConnector(configuration: Configuration, localStorage?: string | null, signals?: Duplex | null, options?: AdapterOptions): Connectors;

/** A server's SMETHOD line. */
export interface ServerMethod {
  name: string;
  address: Address;
  /** SMETHOD ARGS (e.g. zephyr's pin). */
  args: Record<string, string>;
}

/** The seed's ServerManager, for the one transport of a server. */
export class ServerManager extends EventEmitter {
  readonly process: PtHostProcess | null;
  readonly signals: Signals;
  /** The SMETHOD line once ready, else null. */
  readonly method: ServerMethod | null;
  /** SMETHOD-ERROR, start-up error or exit, else null. */
  readonly error: PtHostError | null;
  ready(): Promise<ServerMethod>;
  /** Latest counters (at most 1 s old); with a callback, asked for now. */
  getStats(): TransportStats;
  getStats(callback: (err: Error | null, stats: TransportStats) => void): void;
  /** pthost stops (stdin closes, sessions drain), then the application's server closes. */
  close(callback?: (err: Error | null) => void): this;
  on(event: 'ready', listener: (method: ServerMethod | null) => void): this;
  on(event: 'exit', listener: (code: number | null, signal: NodeJS.Signals | null) => void): this;
  on(event: 'error', listener: (err: PtHostError) => void): this;
  on(event: string | symbol, listener: (...args: any[]) => void): this;
}

export interface ServerOptions extends net.ServerOpts, AdapterOptions {
  /** Where the application's server listens (pthost's target); default 127.0.0.1, a free port. */
  listen?: net.ListenOptions;
}

/** net.Server + ServerManager (the seed's createServer result). */
export type PtServer = Omit<net.Server, 'close'> & {
  readonly process: PtHostProcess | null;
  readonly method: ServerMethod | null;
  readonly error: PtHostError | null;
  readonly signals: Signals;
  readonly manager: ServerManager;
  ready(): Promise<ServerMethod>;
  getStats(): TransportStats;
  getStats(callback: (err: Error | null, stats: TransportStats) => void): void;
  close(callback?: (err: Error | null) => void): PtServer;
};

/** The seed's generateConfiguration(), for one transport: { client, server } configurations. */
export function generateConfiguration(transport: string, options?: AdapterOptions & { plugindir?: string }): { client: Configuration; server: Configuration };

/** The seed's createServer: a bound server (one transport) whose target is the returned net.Server. */
export function createServer(configuration: Configuration, local?: string | null, signals?: Duplex | null, options?: ServerOptions, connectionListener?: (socket: net.Socket) => void): PtServer;
export function createServer(configuration: Configuration, local: string | null | undefined, signals: Duplex | null | undefined, connectionListener: (socket: net.Socket) => void): PtServer;

/** The seed's createProxy: a free server (one transport, configuration.allow); connectionListener is never called. */
export function createProxy(configuration: Configuration, local?: string | null, signals?: Duplex | null, options?: AdapterOptions, connectionListener?: (socket: net.Socket) => void): ServerManager;

/** Whether a transport with these client options is bound (see Connector.isBound). */
export function transportIsBound(name: string, options: unknown): boolean;

/** SOCKS5 reply code → the `code` of the socket's 'error'. */
export const socksReplyCodes: Readonly<Record<number, string>>;
