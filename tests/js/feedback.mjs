// Rating an answer from the official JS SDK (@coze/api), as a Node server or a page would: @coze/api
// 1.3.9 has no feedback method, so the call goes through the SDK's own request path (`client.post`,
// `client.delete`: its base URL, token callback and error classes) to Coze's feedback route.
//
//   node tests/js/feedback.mjs BASE_URL TOKEN [BOT_ID]
//
// Prints one JSON line: the conversation id, the answer's id, what each feedback call answered, the
// rating the session API showed in between, and the error a malformed one raised (class and code).

import { CozeAPI, RoleType } from '@coze/api';

const [baseURL, token, botId] = [process.argv[2], process.argv[3], process.argv[4] ?? '7400000000000000001'];
if (!baseURL || !token) {
  console.error('usage: node feedback.mjs BASE_URL TOKEN [BOT_ID]');
  process.exit(2);
}
const client = new CozeAPI({ baseURL, token: async () => token });

try {
  const conversation = await client.conversations.create({});
  const { chat, messages } = await client.chat.createAndPoll({
    bot_id: botId,
    user_id: 'js-feedback',
    conversation_id: conversation.id,
    additional_messages: [{ role: RoleType.User, content: 'Rate me', content_type: 'text' }],
  });
  if (chat.status !== 'completed') throw new Error(`the chat ended ${chat.status}`);
  const answer = messages.find((message) => message.type === 'answer');
  const path = `/v1/conversations/${conversation.id}/messages/${answer.id}/feedback`;
  const liked = await client.post(path, { feedback_type: 'unlike', reason_types: ['wrong'], comment: 'From Node.' });
  // The rating as the gateway's own session API shows it on the answer (same token).
  const listed = await client.get(`/api/sessions/${conversation.id}/messages`);
  const shown = listed.results.find((message) => message.type === 'answer').feedback;
  let refused = null;
  try {
    await client.post(path, { feedback_type: 'love' });
  } catch (error) {
    refused = { name: error.constructor.name, code: error.code };
  }
  const removed = await client.delete(path);
  console.log(JSON.stringify({ conversation_id: conversation.id, answer_id: answer.id, liked, shown, removed, refused }));
} catch (error) {
  console.error(`feedback failed: ${error.name}: ${error.message}`);
  process.exit(1);
}
