// Independent clients against the graphex examples: the `graphql-ws`
// package (graphql-transport-ws), `subscriptions-transport-ws` (legacy
// graphql-ws) and `graphql-sse` (GraphQL over server-sent events, in its
// distinct connections and single connection modes). Run by
// tests/node_clients.rs:
//
//   node clients.mjs <chat|blog|resume> <transport|legacy> ws://127.0.0.1:PORT/graphql
//   node clients.mjs <chat|blog|resume> <sse-distinct|sse-single> http://127.0.0.1:PORT/graphql
//
// (`resume` runs against the reference app.)
//
// Prints one line per check and exits 0 when every check held.
import { createClient } from 'graphql-ws';
import { createClient as createSseClient } from 'graphql-sse';
import { SubscriptionClient } from 'subscriptions-transport-ws';
import WebSocket from 'ws';

const [scenario, protocol, url] = process.argv.slice(2);
const TIMEOUT_MS = 10000;

function fail(message) {
  console.error(`FAIL: ${message}`);
  process.exit(1);
}

function check(condition, message) {
  if (!condition) fail(message);
  console.log(`ok: ${message}`);
}

const timer = setTimeout(() => fail('timed out'), TIMEOUT_MS * 3);

/** Results of one subscription, as an async queue. */
class Results {
  constructor() {
    this.items = [];
    this.waiters = [];
  }
  push(item) {
    const waiter = this.waiters.shift();
    if (waiter) waiter(item);
    else this.items.push(item);
  }
  next() {
    if (this.items.length > 0) return Promise.resolve(this.items.shift());
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('no result in time')), TIMEOUT_MS);
      this.waiters.push((item) => {
        clearTimeout(t);
        resolve(item);
      });
    });
  }
  pending() {
    return this.items.length;
  }
}

/** The same small interface over the three libraries. */
function connect() {
  if (protocol === 'sse-distinct' || protocol === 'sse-single') {
    const singleConnection = protocol === 'sse-single';
    const client = createSseClient({ url, singleConnection, retryAttempts: 0 });
    const name = `graphql-sse (${singleConnection ? 'single connection' : 'distinct connections'})`;
    return {
      name,
      subscribe(query) {
        const results = new Results();
        const dispose = client.subscribe(
          { query },
          {
            next: (value) => results.push({ value }),
            error: (error) => results.push({ error }),
            complete: () => results.push({ complete: true }),
          },
        );
        return { results, stop: dispose };
      },
      async execute(query) {
        // Queries and mutations go through the client too: in single
        // connection mode on the stream, in distinct connections mode as an
        // event stream of their own (graphex answers one to a client that
        // accepts only text/event-stream). Either way the result, then the
        // operation's `complete`.
        const { results } = this.subscribe(query);
        const first = await results.next();
        if (first.error || first.value.errors) fail(`${query}: ${JSON.stringify(first)}`);
        const end = await results.next();
        check(end.complete === true, `${name}: the operation completes after its result`);
        return first.value.data;
      },
      close: () => client.dispose(),
    };
  }
  if (protocol === 'transport') {
    const client = createClient({ url, webSocketImpl: WebSocket, lazy: false, retryAttempts: 0 });
    return {
      name: 'graphql-ws',
      subscribe(query) {
        const results = new Results();
        const dispose = client.subscribe(
          { query },
          {
            next: (value) => results.push({ value }),
            error: (error) => results.push({ error }),
            complete: () => results.push({ complete: true }),
          },
        );
        return { results, stop: dispose };
      },
      async execute(query) {
        const { results, stop } = this.subscribe(query);
        const first = await results.next();
        stop();
        if (first.error || first.value.errors) fail(`${query}: ${JSON.stringify(first)}`);
        return first.value.data;
      },
      close: () => client.dispose(),
    };
  }
  const client = new SubscriptionClient(url, { reconnect: false, lazy: false }, WebSocket);
  return {
    name: 'subscriptions-transport-ws',
    subscribe(query) {
      const results = new Results();
      const subscription = client.request({ query }).subscribe({
        next: (value) => results.push({ value }),
        error: (error) => results.push({ error }),
        complete: () => results.push({ complete: true }),
      });
      return { results, stop: () => subscription.unsubscribe() };
    },
    async execute(query) {
      const { results, stop } = this.subscribe(query);
      const first = await results.next();
      stop();
      if (first.error || first.value.errors) fail(`${query}: ${JSON.stringify(first)}`);
      return first.value.data;
    },
    close: () => client.close(),
  };
}

/**
 * Repeats `act` until the subscription's first event arrives (the server
 * registers a subscription after the client sent it, and neither protocol
 * acknowledges that), then returns that event.
 */
async function firstEvent(results, act) {
  for (let attempt = 0; attempt < 100; attempt++) {
    await act(attempt);
    await new Promise((resolve) => setTimeout(resolve, 50));
    if (results.pending() > 0) return results.next();
  }
  fail('the subscription never delivered');
}

async function chat(api) {
  const ids = {};
  for (const name of ['alice', 'bob', 'carol']) {
    const data = await api.execute(`mutation { createUser(username: "${name}") { success user { userId } } }`);
    check(data.createUser.success, `${api.name}: created ${name}`);
    ids[name] = data.createUser.user.userId;
  }
  const send = (to, content) =>
    api.execute(
      `mutation { createMessage(senderId: "${ids.alice}", recipientId: "${to}", content: "${content}") { success } }`,
    );
  const bob = api.subscribe(`subscription { messages(userId: "${ids.bob}") { content senderId recipientId } }`);
  const carol = api.subscribe(`subscription { messages(userId: "${ids.carol}") { content recipientId } }`);
  const first = await firstEvent(bob.results, (n) => send(ids.bob, `warmup ${n}`));
  check(first.value.data.messages.recipientId === ids.bob, `${api.name}: bob receives his message`);
  // Drain bob's warm-up messages, then the real one must follow.
  await send(ids.bob, 'hello bob');
  let event = first;
  while (event.value.data.messages.content !== 'hello bob') {
    event = await bob.results.next();
    check(event.value && event.value.data.messages.content.match(/^(warmup \d+|hello bob)$/), `${api.name}: bob's event is his`);
  }
  const carolFirst = await firstEvent(carol.results, (n) => send(ids.carol, `carol ${n}`));
  check(
    carolFirst.value.data.messages.recipientId === ids.carol && carolFirst.value.data.messages.content.startsWith('carol'),
    `${api.name}: carol never saw bob's messages`,
  );
  bob.stop();
  carol.stop();
}

async function blog(api) {
  await api.execute('mutation { createAuthor(username: "TheAlchemist", age: 30) { username } }');
  const readers = api.subscribe('subscription { getLatestBlog { pk title author { username age } } }');
  const post = (title) =>
    api.execute(
      `mutation { postBlog(input: {authorUsername: "TheAlchemist", title: "${title}", content: "c"}) { message } }`,
    );
  const first = await firstEvent(readers.results, (n) => post(`post ${n}`));
  check(first.value.data.getLatestBlog.author.username === 'TheAlchemist', `${api.name}: a post arrives with its author`);
  await post('the last post');
  let event = first;
  while (event.value.data.getLatestBlog.title !== 'the last post') {
    event = await readers.results.next();
    check(event.value && event.value.data.getLatestBlog.pk > 0, `${api.name}: posts arrive in order`);
  }
  check(event.value.data.getLatestBlog.author.age === 30, `${api.name}: the latest post is pushed`);
  readers.stop();
}

/** A cursor's offset in its stream (`<epoch>-<offset>`). */
function offset(cursor) {
  const match = /^[0-9a-f]{16}-(\d+)$/.exec(cursor);
  if (!match) fail(`not a cursor: ${JSON.stringify(cursor)}`);
  return BigInt(match[1]);
}

/**
 * Subscribes, disconnects, misses two changes, then reconnects with a new
 * client and resubscribes with `after` set to the last cursor it saw: the
 * missed changes arrive once and in order, then the live ones.
 */
async function resume(first) {
  const createUser = (api, name) =>
    api.execute(`mutation { createUser(username: "${name}", email: "${name}@example.com", tenant: "acme") { id } }`);
  const query = (after) =>
    `subscription { userChanges(action: CREATE, data: [USERNAME]${after ? `, after: "${after}"` : ''}) { id data cursor } }`;
  const name = (event) => event.value && event.value.data && event.value.data.userChanges.data.username;
  const users = first.subscribe(query(null));
  let event = await firstEvent(users.results, (n) => createUser(first, `warmup${n}`));
  await createUser(first, 'seen');
  while (name(event) !== 'seen') {
    event = await users.results.next();
    check(/^(warmup\d+|seen)$/.test(name(event)), `${first.name}: before the disconnect, ${name(event)}`);
  }
  let last = event.value.data.userChanges.cursor;
  offset(last);
  users.stop();
  first.close();

  const api = connect();
  await createUser(api, 'missed1');
  await createUser(api, 'missed2');
  const resumed = api.subscribe(query(last));
  for (const expected of ['missed1', 'missed2', 'live1', 'live2']) {
    if (expected.startsWith('live')) await createUser(api, expected);
    const got = await resumed.results.next();
    check(name(got) === expected, `${api.name}: ${expected} once, in order (got ${JSON.stringify(got)})`);
    const cursor = got.value.data.userChanges.cursor;
    check(offset(cursor) > offset(last), `${api.name}: ${expected}'s cursor is after the previous one`);
    last = cursor;
  }
  resumed.stop();
  return api;
}

let api = connect();
try {
  if (scenario === 'chat') await chat(api);
  else if (scenario === 'blog') await blog(api);
  else if (scenario === 'resume') api = await resume(api);
  else fail(`unknown scenario ${scenario}`);
  // Let the client's complete/stop reach the server before closing.
  await new Promise((resolve) => setTimeout(resolve, 100));
  console.log('done');
} catch (error) {
  fail(error && error.stack ? error.stack : String(error));
} finally {
  api.close();
  clearTimeout(timer);
}
