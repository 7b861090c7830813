// Runs the Vercel AI SDK (`ai` with its OpenAI provider, `@ai-sdk/openai`) against the gateway: argv[2] is the
// gateway's /v1 base URL, argv[3] the chat model, argv[4] the embedding model. Prints one JSON line: each case's
// result, or its error. Driven by tests/conformance/test_ai_sdk.py.
import { createOpenAI } from "@ai-sdk/openai";
import { embedMany, generateText, Output, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";

const [baseURL, model, embeddingModel] = process.argv.slice(2);
const openai = createOpenAI({ baseURL, apiKey: "unused" });
globalThis.AI_SDK_LOG_WARNINGS = false;
const settings = { temperature: 0, maxRetries: 0 };
const called = [];
const weather = tool({
  description: "The current weather in a city",
  inputSchema: z.object({ city: z.string() }),
  execute: async ({ city }) => { called.push(city); return `18 C and sunny in ${city}`; },
});
const City = z.object({ name: z.string(), country: z.string() });

async function streamed(result) {
  const parts = [];
  for await (const part of result.fullStream) parts.push(part.type);
  return { parts, text: await result.text, toolCalls: await result.toolCalls, usage: await result.usage, finishReason: await result.finishReason };
}

const cases = {
  // the provider's default language model speaks the Responses API; .chat and .completion the older ones
  responsesText: async () => { const r = await generateText({ model: openai(model), prompt: "Name a colour.", maxOutputTokens: 300, ...settings }); return { text: r.text, usage: r.usage, finishReason: r.finishReason }; },
  chatText: async () => { const r = await generateText({ model: openai.chat(model), prompt: "Name a colour.", maxOutputTokens: 24, ...settings }); return { text: r.text, usage: r.usage, finishReason: r.finishReason }; },
  completionText: async () => { const r = await generateText({ model: openai.completion(model), prompt: "The capital of France is", maxOutputTokens: 6, ...settings }); return { text: r.text }; },
  responsesStream: () => streamed(streamText({ model: openai(model), prompt: "Name a colour.", maxOutputTokens: 300, ...settings })),
  chatStream: () => streamed(streamText({ model: openai.chat(model), prompt: "Name a colour.", maxOutputTokens: 24, ...settings })),
  chatToolRequired: async () => { const r = await generateText({ model: openai.chat(model), prompt: "What is the weather in Paris?", tools: { weather }, toolChoice: "required", maxOutputTokens: 60, ...settings }); return { toolCalls: r.toolCalls, toolResults: r.toolResults }; },
  responsesToolRequired: async () => { const r = await generateText({ model: openai(model), prompt: "What is the weather in Paris?", tools: { weather }, toolChoice: "required", maxOutputTokens: 300, ...settings }); return { toolCalls: r.toolCalls, toolResults: r.toolResults }; },
  chatToolNamedStream: () => streamed(streamText({ model: openai.chat(model), prompt: "What is the weather in Paris?", tools: { weather }, toolChoice: { type: "tool", toolName: "weather" }, maxOutputTokens: 60, ...settings })),
  responsesToolStream: () => streamed(streamText({ model: openai(model), prompt: "What is the weather in Paris?", tools: { weather }, toolChoice: "required", maxOutputTokens: 300, ...settings })),
  // two steps: a forced call, its result sent back, then an answer (what an agent loop does)
  chatTwoSteps: async () => { const r = await generateText({ model: openai.chat(model), prompt: "What is the weather in Paris?", tools: { weather }, maxOutputTokens: 60, stopWhen: stepCountIs(2), prepareStep: ({ stepNumber }) => ({ toolChoice: stepNumber === 0 ? "required" : "none" }), ...settings }); return { steps: r.steps.length, finishReasons: r.steps.map((s) => s.finishReason) }; },
  responsesTwoSteps: async () => { const r = await generateText({ model: openai(model), prompt: "What is the weather in Paris?", tools: { weather }, maxOutputTokens: 300, stopWhen: stepCountIs(2), prepareStep: ({ stepNumber }) => ({ toolChoice: stepNumber === 0 ? "required" : "none" }), ...settings }); return { steps: r.steps.length, finishReasons: r.steps.map((s) => s.finishReason) }; },
  responsesObject: async () => (await generateText({ model: openai(model), prompt: "Paris is a city in which country?", output: Output.object({ schema: City }), maxOutputTokens: 100, ...settings })).output,
  chatObject: async () => (await generateText({ model: openai.chat(model), prompt: "Paris is a city in which country?", output: Output.object({ schema: City }), maxOutputTokens: 100, ...settings })).output,
  embeddings: async () => (await embedMany({ model: openai.embedding(embeddingModel), values: ["Paris", "Rome"], maxRetries: 0 })).embeddings.map((e) => e.length),
};

const out = {};
for (const [name, run] of Object.entries(cases)) {
  try { out[name] = { result: await run() }; }
  catch (error) { out[name] = { error: `${error?.name}: ${error?.message}`, body: error?.responseBody ?? null }; }
}
out.called = called;
console.log(JSON.stringify(out));
