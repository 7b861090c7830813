// Runs one conformance case with the official openai Node client and prints what happened as one JSON line:
// {sent: [request bodies as the client sent them], body | chunks | error}. The case comes as JSON in argv[2]:
// {baseURL, apiKey, maxRetries, endpoint: "chat" | "completions" | "embeddings" | "models" | "responses" | "responses_stream" |
// "responses_stored" | "chat_stored" | "conversations" | "batches" | "chat_run_tools" | "chat_parse_zod", params}; "chat_stored" walks OpenAI's stored chat completions API; "conversations" its Conversations API; "batches" its Files and Batch APIs; "chat_parse_zod" parses a zod response format and a zod tool; "models" lists the models, then retrieves params.model; "chat_run_tools" is
// client.chat.completions.runTools (streamed when params.stream), its calls recorded in `called`; "responses" is client.responses.create
// (its events when params.stream; a whole answer's output_text too); "responses_stream" is the client's stream helper, whose
// events and finalResponse() come back; "responses_stored" creates, retrieves, lists input items, deletes, retrieves again. Driven by tests/conformance/test_clients.py and test_responses.py.
import OpenAI, { toFile } from "openai";

const spec = JSON.parse(process.argv[2]);
const sent = [];
const client = new OpenAI({
  baseURL: spec.baseURL,
  apiKey: spec.apiKey,
  maxRetries: spec.maxRetries,
  timeout: 60_000,
  // Records each request body exactly as the client put it on the wire.
  fetch: async (url, init) => {
    // A GET (the models endpoints) has none; a file upload's is a form, recorded by its field names.
    if (typeof init?.body === "string") sent.push(JSON.parse(init.body));
    else if (init?.body instanceof FormData) sent.push({ form: [...init.body.keys()] });
    return fetch(url, init);
  },
});

const out = { sent };
try {
  const create = {
    chat: (p) => client.chat.completions.create(p),
    completions: (p) => client.completions.create(p),
    responses: (p) => client.responses.create(p),
  }[spec.endpoint];
  if (create && spec.params.stream) {
    out.chunks = [];
    for await (const chunk of await create(spec.params)) out.chunks.push(chunk);
  } else if (create) {
    out.body = await create(spec.params);
    if (spec.endpoint === "responses") out.output_text = out.body.output_text;
  } else if (spec.endpoint === "responses_stored") {
    // create, retrieve, list the input items, delete, then retrieve again (the last must fail)
    const created = await client.responses.create(spec.params);
    const retrieved = await client.responses.retrieve(created.id);
    const items = [];
    for await (const item of client.responses.inputItems.list(created.id)) items.push(item);
    await client.responses.delete(created.id);
    out.body = { created, retrieved, items };
    await client.responses.retrieve(created.id);
  } else if (spec.endpoint === "chat_stored") {
    // create (through the stream helper when params.stream), retrieve, list this metadata's one per page, update
    // the metadata, list the messages, delete, then retrieve again (the last must fail)
    const { stream, ...params } = spec.params;
    const created = stream ? await client.chat.completions.stream(params).finalChatCompletion() : await client.chat.completions.create(params);
    const retrieved = await client.chat.completions.retrieve(created.id);
    const listed = [];
    for await (const c of client.chat.completions.list({ metadata: params.metadata, limit: 1 })) listed.push(c.id);
    const updated = await client.chat.completions.update(created.id, { metadata: { reviewed: "yes" } });
    const messages = [];
    for await (const m of client.chat.completions.messages.list(created.id)) messages.push(m);
    const deleted = await client.chat.completions.delete(created.id);
    out.body = { created, retrieved, listed, updated, messages, deleted };
    await client.chat.completions.retrieve(created.id);
  } else if (spec.endpoint === "conversations") {
    // make a conversation, answer a response given it, page its items, add one, read it, delete it, relabel
    // the conversation, delete it, then read it again (the last must fail)
    const conversation = await client.conversations.create({ items: spec.params.items, metadata: { case: "node" } });
    const response = await client.responses.create({ ...spec.params.response, conversation: conversation.id });
    const items = [];
    for await (const item of client.conversations.items.list(conversation.id, { order: "asc", limit: 2 })) items.push(item);
    const added = await client.conversations.items.create(conversation.id, { items: [{ type: "message", role: "user", content: "Thanks." }] });
    const read = await client.conversations.items.retrieve(added.data[0].id, { conversation_id: conversation.id });
    const afterDelete = await client.conversations.items.delete(added.data[0].id, { conversation_id: conversation.id });
    const updated = await client.conversations.update(conversation.id, { metadata: { reviewed: "yes" } });
    const deleted = await client.conversations.delete(conversation.id);
    out.body = { conversation, response, items, added, read, afterDelete, updated, deleted };
    await client.conversations.retrieve(conversation.id);
  } else if (spec.endpoint === "batches") {
    // upload params.jsonl, run it as a batch to params.batchEndpoint, wait for its end, read its output and error
    // files, list files and batches, delete the input, then read it again (the last must fail)
    const upload = await client.files.create({ file: await toFile(Buffer.from(spec.params.jsonl), "requests.jsonl"), purpose: "batch" });
    let batch = await client.batches.create({ input_file_id: upload.id, endpoint: spec.params.batchEndpoint, completion_window: "24h" });
    const deadline = Date.now() + 60000;
    while (!["completed", "failed", "cancelled", "expired"].includes(batch.status) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      batch = await client.batches.retrieve(batch.id);
    }
    const read = async (id) => (id ? await (await client.files.content(id)).text() : "");
    const files = [];
    for await (const file of client.files.list()) files.push(file.id);
    const batches = [];
    for await (const b of client.batches.list({ limit: 1 })) batches.push(b.id);
    const deleted = await client.files.delete(upload.id);
    out.body = { upload, batch, output: await read(batch.output_file_id), errors: await read(batch.error_file_id), files, batches, deleted };
    await client.files.retrieve(upload.id);
  } else if (spec.endpoint === "responses_stream") {
    const stream = client.responses.stream(spec.params);
    out.chunks = [];
    for await (const event of stream) out.chunks.push(event);
    const final = await stream.finalResponse();
    out.body = final;
    // finalResponse() carries no output_text (create() adds it): joined here the way the SDK joins it.
    out.output_text = final.output.filter((o) => o.type === "message").flatMap((o) => o.content)
      .filter((c) => c.type === "output_text").map((c) => c.text).join("");
  } else if (spec.endpoint === "chat_run_tools") {
    // The SDK's own tool loop: each tool becomes a local function that records the arguments runTools parsed
    // for it and answers spec.toolResult; the loop ends when the model stops calling (or after a named call).
    out.called = [];
    const tools = spec.params.tools.map((t) => ({
      type: "function",
      function: { ...t.function, parse: JSON.parse, function: (args) => { out.called.push({ name: t.function.name, args }); return spec.toolResult; } },
    }));
    const runner = client.chat.completions.runTools({ ...spec.params, tools }, { maxChatCompletions: 3 });
    out.body = await runner.finalChatCompletion();
    out.messages = runner.messages;
  } else if (spec.endpoint === "chat_parse_zod") {
    // TypeScript's structured outputs: a zod schema as the response format, then a zod-defined tool, through the
    // SDK's parse helper (which validates what comes back against the zod schemas).
    const { z } = await import("zod");
    const { zodResponseFormat, zodFunction } = await import("openai/helpers/zod");
    const City = z.object({ city: z.string().max(20), population: z.number().int() });
    const GetWeather = z.object({ city: z.string().max(20) });
    const answer = await client.chat.completions.parse({ ...spec.params, response_format: zodResponseFormat(City, "city") });
    const called = await client.chat.completions.parse({ ...spec.params, tools: [zodFunction({ name: "get_weather", parameters: GetWeather })],
      tool_choice: "required" });
    out.body = { parsed: answer.choices[0].message.parsed, finish: answer.choices[0].finish_reason,
      calls: called.choices[0].message.tool_calls.map((c) => ({ name: c.function.name, parsed: c.function.parsed_arguments })) };
  } else if (spec.endpoint === "models") {
    const listed = [];
    for await (const model of client.models.list()) listed.push(model);
    out.body = { listed, retrieved: await client.models.retrieve(spec.params.model) };
  } else {
    out.body = await client.embeddings.create(spec.params);
  }
} catch (err) {
  if (!(err instanceof OpenAI.APIError)) throw err;
  out.error = { class: err.constructor.name, status: err.status ?? null, retry_after: err.headers?.get("retry-after") ?? null, message: err.message };
}
process.stdout.write(JSON.stringify(out) + "\n");
