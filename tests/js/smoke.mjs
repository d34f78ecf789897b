// A Coze client written with the official JS SDK (@coze/api), as a Node server would use it:
// create a conversation without a bot, then stream two turns in it.
//
//   node tests/js/smoke.mjs BASE_URL TOKEN [BOT_ID]
//   (or COZE_BASE_URL, COZE_API_TOKEN, COZE_BOT_ID in the environment)
//
// Prints one JSON line: the conversation id and, per turn, the event names, the streamed answer,
// the chat id and its status. Exits non-zero when a call fails or a stream is not what Coze sends:
// an event the SDK does not know, a chat that does not complete, or no `done` at the end.

import { ChatEventType, CozeAPI, RoleType } from '@coze/api';

const [baseURL, token, botId] = [
  process.argv[2] ?? process.env.COZE_BASE_URL,
  process.argv[3] ?? process.env.COZE_API_TOKEN,
  process.argv[4] ?? process.env.COZE_BOT_ID ?? '7400000000000000001',
];
if (!baseURL || !token) {
  console.error('usage: node smoke.mjs BASE_URL TOKEN [BOT_ID]');
  process.exit(2);
}

const known = new Set(Object.values(ChatEventType));
const client = new CozeAPI({ baseURL, token: async () => token });

async function streamTurn(conversationId, text) {
  const events = [];
  let answer = '';
  let chat;
  for await (const event of client.chat.stream({
    bot_id: botId,
    user_id: 'js-smoke',
    conversation_id: conversationId,
    additional_messages: [{ role: RoleType.User, content: text, content_type: 'text' }],
  })) {
    if (!known.has(event.event)) throw new Error(`unknown event ${event.event}`);
    if (event.event === ChatEventType.ERROR) throw new Error(`error event ${JSON.stringify(event.data)}`);
    events.push(event.event);
    if (event.event === ChatEventType.CONVERSATION_MESSAGE_DELTA) answer += event.data.content;
    if (event.event === ChatEventType.CONVERSATION_CHAT_COMPLETED) chat = event.data;
  }
  if (events.at(-1) !== ChatEventType.DONE) throw new Error(`the stream ended with ${events.at(-1)}, not done`);
  if (!chat || chat.status !== 'completed') throw new Error('the chat did not complete');
  if (chat.conversation_id !== conversationId) throw new Error('the chat ran in another conversation');
  return { events, answer, chat_id: chat.id, status: chat.status };
}

try {
  const conversation = await client.conversations.create({});
  const turns = [];
  for (const text of ['Hello from Node', 'And a second turn']) {
    turns.push(await streamTurn(conversation.id, text));
  }
  console.log(JSON.stringify({ conversation_id: conversation.id, turns }));
} catch (error) {
  console.error(`smoke failed: ${error.name}: ${error.message}`);
  process.exit(1);
}
