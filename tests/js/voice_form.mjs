// An older voice server, written against Coze's raw HTTP API with no SDK: it creates the
// conversation with a form body (URL-encoded, or multipart), chats without streaming and polls
// until the chat has ended, then reads the chat's messages.
//
//   node tests/js/voice_form.mjs BASE_URL TOKEN BOT_ID [urlencoded|multipart]
//
// Prints one JSON line: the conversation, the statuses polled and the answer. Exits non-zero when
// an answer is not Coze's envelope or the chat does not complete.

const [baseURL, token, botId, form = 'urlencoded'] = process.argv.slice(2);
if (!baseURL || !token || !botId) {
  console.error('usage: node voice_form.mjs BASE_URL TOKEN BOT_ID [urlencoded|multipart]');
  process.exit(2);
}
const headers = { Authorization: `Bearer ${token}` };

async function coze(path, init = {}) {
  const response = await fetch(`${baseURL}${path}`, { ...init, headers: { ...headers, ...init.headers } });
  const body = await response.json();
  if (body.code !== 0) throw new Error(`${path}: HTTP ${response.status}, code ${body.code}: ${body.msg}`);
  return body.data;
}

try {
  const fields = { bot_id: botId, user_id: 'speaker-7', meta_data: JSON.stringify({ room: 'kitchen' }) };
  const body = form === 'multipart' ? new FormData() : new URLSearchParams();
  for (const [name, value] of Object.entries(fields)) body.append(name, value);
  const conversation = await coze('/v1/conversation/create', { method: 'POST', body });

  const chat = await coze(`/v3/chat?conversation_id=${conversation.id}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({
      bot_id: botId,
      user_id: 'speaker-7',
      stream: false,
      additional_messages: [{ role: 'user', content: 'Turn on the lights', content_type: 'text' }],
    }),
  });
  const statuses = [chat.status];
  let current = chat;
  for (let polls = 0; current.status === 'in_progress' && polls < 200; polls += 1) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    current = await coze(`/v3/chat/retrieve?conversation_id=${conversation.id}&chat_id=${chat.id}`);
    statuses.push(current.status);
  }
  if (current.status !== 'completed') throw new Error(`the chat ended ${current.status}`);
  const messages = await coze(`/v3/chat/message/list?conversation_id=${conversation.id}&chat_id=${chat.id}`);
  const answer = messages.find((message) => message.type === 'answer');
  console.log(JSON.stringify({ conversation, statuses, answer: answer.content, chat_id: chat.id }));
} catch (error) {
  console.error(`voice_form failed: ${error.message}`);
  process.exit(1);
}
