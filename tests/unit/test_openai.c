/* test_openai.c — the OpenAI API's bodies (serve/openai.h): every field of
 * a completion and a chat request read as written, each refusal with its
 * status, field and message (malformed JSON, wrong types, ranges, limits,
 * another model, what the server does not do), the chat template's text,
 * and the response objects parsed back (legacy and chat logprobs, a token
 * that is part of a character, usage, errors, valid UTF-8 always); and the
 * Prometheus page's histogram and counters as text. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "io/utf8.h"
#include "serve/chat_template.h"
#include "serve/openai.h"
#include "serve/prometheus.h"

static const fs_openai_limits LIM = {"tiny", 100};

static void parse_ok(const char *body, fs_openai_request *r) {
    fs_openai_error e = {0};
    int rc = fs_openai_parse_completion(body, strlen(body), &LIM, r, &e);
    if (rc) fail_msg("refused %s: %d %s", body, e.status, e.message);
}

/* body is refused with status, param ("" = null) and a message containing
 * `says`. */
static void refused(int chat, const char *body, int status, const char *param, const char *says) {
    fs_openai_request r;
    fs_openai_error e = {0};
    int rc = chat ? fs_openai_parse_chat(body, strlen(body), &LIM, &r, &e)
                  : fs_openai_parse_completion(body, strlen(body), &LIM, &r, &e);
    if (!rc) fail_msg("accepted %s", body);
    assert_int_equal(rc, -status);
    assert_int_equal(e.status, status);
    assert_string_equal(e.param, param);
    if (!strstr(e.message, says)) fail_msg("%s: message '%s' lacks '%s'", body, e.message, says);
    assert_null(r.prompt); /* nothing left to free */
    assert_int_equal(r.n_stop, 0);
}

static void test_completion_fields(void **state) {
    (void)state;
    fs_openai_request r;
    parse_ok("{\"model\": \"tiny\", \"prompt\": \"Hi\\u0000there\", \"max_tokens\": 7, \"temperature\": 0.5, "
             "\"top_p\": 0.9, \"top_k\": 40, \"seed\": -3, \"stop\": [\"\\n\", \"END\"], \"stream\": true, "
             "\"stream_options\": {\"include_usage\": true}, \"logprobs\": 3, \"user\": \"x\", \"n\": 1, "
             "\"presence_penalty\": 0, \"logit_bias\": {}}",
             &r);
    assert_int_equal(r.kind, FS_OPENAI_COMPLETION);
    assert_int_equal(r.prompt_len, 8);
    assert_memory_equal(r.prompt, "Hi\0there", 8);
    assert_int_equal(r.max_tokens, 7);
    assert_true(r.max_tokens_given);
    assert_true(r.sampler.temperature == 0.5 && r.sampler.top_p == 0.9 && r.sampler.top_k == 40);
    assert_true(r.seed_given);
    assert_true(r.sampler.seed == (uint64_t)-3);
    assert_int_equal(r.n_stop, 2);
    assert_string_equal(r.stop[0], "\n");
    assert_string_equal(r.stop[1], "END");
    assert_true(r.stream && r.include_usage && r.logprobs);
    assert_int_equal(r.top_logprobs, 3);
    fs_openai_request_release(&r);
    /* defaults: OpenAI's */
    parse_ok("{\"prompt\": \"x\", \"temperature\": null, \"stop\": null, \"logprobs\": null}", &r);
    assert_true(r.sampler.temperature == 1 && r.sampler.top_p == 1 && r.sampler.top_k == 0);
    assert_false(r.max_tokens_given || r.seed_given || r.stream || r.echo || r.logprobs);
    assert_int_equal(fs_openai_default_max_tokens(&r, 1000, 4096), 16);
    assert_int_equal(fs_openai_default_max_tokens(&r, 1000, 8), 8);
    fs_openai_request_release(&r);
    parse_ok("{\"prompt\": \"x\", \"stop\": \"##\", \"top_k\": -1, \"echo\": true, \"max_tokens\": 0}", &r);
    assert_int_equal(r.n_stop, 1);
    assert_int_equal(r.sampler.top_k, 0);
    assert_true(r.echo && r.max_tokens_given && r.max_tokens == 0);
    fs_openai_request_release(&r);
    /* echo with logprobs: the prompt's log-probabilities come too */
    parse_ok("{\"prompt\": \"x\", \"echo\": true, \"logprobs\": 2, \"max_tokens\": 0}", &r);
    assert_true(r.echo && r.logprobs && r.max_tokens == 0);
    assert_int_equal(r.top_logprobs, 2);
    fs_openai_request_release(&r);
}

static void test_prompt_forms(void **state) {
    (void)state;
    fs_openai_request r;
    parse_ok("{\"prompt\": [\"only\"]}", &r);
    assert_string_equal(r.prompt, "only");
    fs_openai_request_release(&r);
    parse_ok("{\"prompt\": [5, 0, 255]}", &r);
    assert_null(r.prompt);
    assert_int_equal(r.n_prompt_ids, 3);
    assert_int_equal(r.prompt_ids[0], 5);
    assert_int_equal(r.prompt_ids[2], 255);
    fs_openai_request_release(&r);
    parse_ok("{\"prompt\": [[7, 8]]}", &r);
    assert_int_equal(r.n_prompt_ids, 2);
    assert_int_equal(r.prompt_ids[1], 8);
    fs_openai_request_release(&r);
    refused(0, "{\"prompt\": [\"a\", \"b\"]}", 400, "prompt", "2 prompts");
    refused(0, "{\"prompt\": []}", 400, "prompt", "empty list");
    refused(0, "{\"prompt\": [1, -2]}", 400, "prompt", "token 1");
    refused(0, "{\"prompt\": [1, \"a\"]}", 400, "prompt", "token 1");
    refused(0, "{\"prompt\": 12}", 400, "prompt", "not an integer");
    refused(0, "{\"prompt\": [{}]}", 400, "prompt", "not a list of an object");
    refused(0, "{\"max_tokens\": 3}", 400, "prompt", "'prompt' is required");
}

static void test_refusals(void **state) {
    (void)state;
    refused(0, "{\"prompt\": \"x\"", 400, "", "not valid JSON");
    refused(0, "", 400, "", "not valid JSON");
    refused(0, "[1, 2]", 400, "", "must be a JSON object, not an array");
    refused(0, "{\"prompt\": \"x\", \"max_tokens\": \"5\"}", 400, "max_tokens", "must be an integer, not a string");
    refused(0, "{\"prompt\": \"x\", \"max_tokens\": 2.5}", 400, "max_tokens", "must be an integer");
    refused(0, "{\"prompt\": \"x\", \"max_tokens\": 0}", 400, "max_tokens", "at least 1");
    refused(0, "{\"prompt\": \"x\", \"max_tokens\": 101}", 400, "max_tokens", "max_tokens_limit = 100");
    refused(0, "{\"prompt\": \"x\", \"temperature\": 2.5}", 400, "temperature", "outside [0, 2]");
    refused(0, "{\"prompt\": \"x\", \"temperature\": \"hot\"}", 400, "temperature", "must be a number");
    refused(0, "{\"prompt\": \"x\", \"top_p\": 0}", 400, "top_p", "outside (0, 1]");
    refused(0, "{\"prompt\": \"x\", \"top_k\": -2}", 400, "top_k", "outside [-1,");
    refused(0, "{\"prompt\": \"x\", \"seed\": 1.5}", 400, "seed", "must be an integer");
    refused(0, "{\"prompt\": \"x\", \"stream\": \"yes\"}", 400, "stream", "true or false");
    refused(0, "{\"prompt\": \"x\", \"stream_options\": {\"include_usage\": true}}", 400, "stream_options",
            "only allowed when 'stream' is true");
    refused(0, "{\"prompt\": \"x\", \"logprobs\": 6}", 400, "logprobs", "outside [0, 5]");
    refused(0, "{\"prompt\": \"x\", \"stop\": [\"a\", \"b\", \"c\", \"d\", \"e\"]}", 400, "stop", "at most 4");
    refused(0, "{\"prompt\": \"x\", \"stop\": \"\"}", 400, "stop", "empty string");
    refused(0, "{\"prompt\": \"x\", \"stop\": [\"a\", 3]}", 400, "stop", "item 1 must be a string");
    refused(0, "{\"prompt\": \"x\", \"n\": 2}", 400, "n", "one choice per request");
    refused(0, "{\"prompt\": \"x\", \"best_of\": 3}", 400, "best_of", "one choice");
    refused(0, "{\"prompt\": \"x\", \"frequency_penalty\": 0.5}", 400, "frequency_penalty", "not supported");
    refused(0, "{\"prompt\": \"x\", \"logit_bias\": {\"5\": 1}}", 400, "logit_bias", "not supported");
    refused(0, "{\"prompt\": \"x\", \"suffix\": \"end\"}", 400, "suffix", "not supported");
    refused(0, "{\"prompt\": \"x\", \"model\": \"gpt-4\"}", 404, "model", "'gpt-4' does not exist");
    refused(0, "{\"prompt\": \"x\", \"model\": 4}", 400, "model", "must be a string");
}

static void test_chat(void **state) {
    (void)state;
    fs_openai_request r;
    fs_openai_error e = {0};
    const char *body = "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, "
                       "{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"Who \"}, "
                       "{\"type\": \"text\", \"text\": \"made it?\"}]}, {\"role\": \"assistant\", \"content\": \"God.\"}, "
                       "{\"role\": \"developer\", \"content\": \"Line one\\nline two\"}, {\"role\": \"user\", "
                       "\"content\": \"And?\"}], \"max_completion_tokens\": 9, \"logprobs\": true, \"top_logprobs\": 2, "
                       "\"stop\": \"!\", \"response_format\": {\"type\": \"text\"}}";
    assert_int_equal(fs_openai_parse_chat(body, strlen(body), &LIM, &r, &e), 0);
    assert_string_equal(r.prompt, "System: Be brief.\nUser: Who made it?\nAssistant: God.\nSystem: Line one\nline two\n"
                                  "User: And?\nAssistant:");
    assert_int_equal(r.prompt_len, strlen(r.prompt));
    assert_int_equal(r.max_tokens, 9);
    assert_true(r.logprobs);
    assert_int_equal(r.top_logprobs, 2);
    /* the request's stop, then the template's */
    assert_int_equal(r.n_stop, 4);
    assert_string_equal(r.stop[0], "!");
    assert_string_equal(r.stop[1], "\nUser:");
    assert_string_equal(r.stop[2], "\nSystem:");
    assert_string_equal(r.stop[3], "\nAssistant:");
    assert_int_equal(fs_openai_default_max_tokens(&r, 30, 100), 30); /* the rest of the context */
    assert_int_equal(fs_openai_default_max_tokens(&r, SIZE_MAX, 100), 100);
    fs_openai_request_release(&r);
    refused(1, "{\"messages\": []}", 400, "messages", "non-empty list");
    refused(1, "{\"prompt\": \"x\"}", 400, "messages", "'messages' is required");
    refused(1, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"tool\", \"content\": \"b\"}]}",
            400, "messages[1].role", "\"system\", \"developer\", \"user\" or \"assistant\"");
    refused(1, "{\"messages\": [{\"role\": \"user\"}]}", 400, "messages[0].content", "is required");
    refused(1, "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}", 400,
            "messages[0].content", "text only");
    refused(1, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"top_logprobs\": 2}", 400,
            "top_logprobs", "needs 'logprobs': true");
    refused(1, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"tools\": [{\"type\": \"function\"}]}", 400,
            "tools", "not supported");
    refused(1, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"response_format\": {\"type\": "
               "\"json_object\"}}",
            400, "response_format", "must be {\"type\": \"text\"}");
    refused(1, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"max_tokens\": 1000}", 400, "max_tokens",
            "max_tokens_limit");
    /* an assistant turn may have no content */
    body = "{\"messages\": [{\"role\": \"assistant\", \"content\": null}]}";
    assert_int_equal(fs_openai_parse_chat(body, strlen(body), &LIM, &r, &e), 0);
    assert_string_equal(r.prompt, "Assistant: \nAssistant:");
    fs_openai_request_release(&r);
}

/* ---- responses ---- */

static fs_tokenizer *byte_tokenizer(void) {
    fs_tokenizer *t = NULL;
    fs_error err = {0};
    assert_int_equal(fs_tokenizer_open(&t, "byte", "test", &err), 0);
    return t;
}

static json_t *parsed(char *s) {
    assert_non_null(s);
    assert_int_equal(fs_utf8_valid_prefix(s, strlen(s)), strlen(s));
    json_error_t je;
    json_t *j = json_loads(s, 0, &je);
    if (!j) fail_msg("not JSON: %s: %s", je.text, s);
    free(s);
    return j;
}

static void test_completion_response(void **state) {
    (void)state;
    fs_tokenizer *tok = byte_tokenizer();
    fs_openai_reply rep = {FS_OPENAI_COMPLETION, "cmpl-1", 1700000000, "tiny", tok, 1};
    fs_openai_token toks[2] = {
        {.token = 'a', .logprob = -0.5f, .n_top = 2, .top_token = {'a', 'b'}, .top_logprob = {-0.5f, -1.5f},
         .text_offset = 3},
        {.token = 0xC3, .logprob = -2.0f, .n_top = 1, .top_token = {'c'}, .top_logprob = {-0.25f},
         .text_offset = 4},
    };
    fs_openai_choice ch = {"Hi a\xEF\xBF\xBD", 7, toks, 2, "length"};
    fs_openai_usage u = {4, 2, 1};
    json_t *j = parsed(fs_openai_response_json(&rep, &ch, &u));
    assert_string_equal(json_string_value(json_object_get(j, "object")), "text_completion");
    assert_int_equal(json_integer_value(json_object_get(j, "created")), 1700000000);
    json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(c0, "text")), "Hi a\xEF\xBF\xBD");
    assert_string_equal(json_string_value(json_object_get(c0, "finish_reason")), "length");
    json_t *lp = json_object_get(c0, "logprobs");
    assert_string_equal(json_string_value(json_array_get(json_object_get(lp, "tokens"), 0)), "a");
    /* a byte that is part of a character: OpenAI's "bytes:" form */
    assert_string_equal(json_string_value(json_array_get(json_object_get(lp, "tokens"), 1)), "bytes:\\xc3");
    assert_true(json_real_value(json_array_get(json_object_get(lp, "token_logprobs"), 1)) == -2.0);
    json_t *top1 = json_array_get(json_object_get(lp, "top_logprobs"), 1);
    assert_int_equal(json_object_size(top1), 2); /* the alternative and, always, the sampled token */
    assert_true(json_real_value(json_object_get(top1, "c")) == -0.25);
    assert_true(json_real_value(json_object_get(top1, "bytes:\\xc3")) == -2.0);
    assert_int_equal(json_object_size(json_array_get(json_object_get(lp, "top_logprobs"), 0)), 2);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(lp, "text_offset"), 1)), 4);
    json_t *usage = json_object_get(j, "usage");
    assert_int_equal(json_integer_value(json_object_get(usage, "total_tokens")), 6);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(usage, "prompt_tokens_details"), "cached_tokens")), 1);
    json_decref(j);

    /* an echoed prompt's first token: null log p and null alternatives, as OpenAI's */
    fs_openai_token echoed[2] = {{.token = 'H', .unconditioned = 1}, toks[0]};
    echoed[1].text_offset = 1;
    fs_openai_choice ech = {"Ha", 2, echoed, 2, "length"};
    j = parsed(fs_openai_response_json(&rep, &ech, &u));
    lp = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "logprobs");
    assert_string_equal(json_string_value(json_array_get(json_object_get(lp, "tokens"), 0)), "H");
    assert_true(json_is_null(json_array_get(json_object_get(lp, "token_logprobs"), 0)));
    assert_true(json_is_null(json_array_get(json_object_get(lp, "top_logprobs"), 0)));
    assert_int_equal(json_integer_value(json_array_get(json_object_get(lp, "text_offset"), 0)), 0);
    assert_true(json_real_value(json_array_get(json_object_get(lp, "token_logprobs"), 1)) == -0.5);
    assert_int_equal(json_object_size(json_array_get(json_object_get(lp, "top_logprobs"), 1)), 2);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(lp, "text_offset"), 1)), 1);
    json_decref(j);

    /* a chunk mid-stream: no finish_reason; without logprobs asked, null */
    rep.logprobs = 0;
    fs_openai_choice mid = {"x", 1, NULL, 0, NULL};
    j = parsed(fs_openai_chunk_json(&rep, &mid, 0));
    c0 = json_array_get(json_object_get(j, "choices"), 0);
    assert_true(json_is_null(json_object_get(c0, "finish_reason")));
    assert_true(json_is_null(json_object_get(c0, "logprobs")));
    json_decref(j);
    j = parsed(fs_openai_usage_chunk_json(&rep, &u));
    assert_int_equal(json_array_size(json_object_get(j, "choices")), 0);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "usage"), "completion_tokens")), 2);
    json_decref(j);
    fs_tokenizer_destroy(tok);
}

static void test_chat_response(void **state) {
    (void)state;
    fs_tokenizer *tok = byte_tokenizer();
    fs_openai_reply rep = {FS_OPENAI_CHAT, "chatcmpl-1", 1, "tiny", tok, 1};
    fs_openai_token t = {.token = 'H', .logprob = -0.1f, .n_top = 2, .top_token = {'H', 'h'},
                         .top_logprob = {-0.1f, -3.0f}};
    fs_openai_choice ch = {"H", 1, &t, 1, "stop"};
    fs_openai_usage u = {3, 1, 0};
    json_t *j = parsed(fs_openai_response_json(&rep, &ch, &u));
    assert_string_equal(json_string_value(json_object_get(j, "object")), "chat.completion");
    json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
    json_t *msg = json_object_get(c0, "message");
    assert_string_equal(json_string_value(json_object_get(msg, "role")), "assistant");
    assert_string_equal(json_string_value(json_object_get(msg, "content")), "H");
    json_t *content = json_object_get(json_object_get(c0, "logprobs"), "content");
    json_t *tok0 = json_array_get(content, 0);
    assert_string_equal(json_string_value(json_object_get(tok0, "token")), "H");
    assert_int_equal(json_integer_value(json_array_get(json_object_get(tok0, "bytes"), 0)), 'H');
    json_t *alts = json_object_get(tok0, "top_logprobs");
    assert_int_equal(json_array_size(alts), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(alts, 1), "token")), "h");
    json_decref(j);
    /* stream: the role first, then content deltas, then an empty delta with the reason */
    j = parsed(fs_openai_chunk_json(&rep, &ch, 1));
    c0 = json_array_get(json_object_get(j, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(json_object_get(c0, "delta"), "role")), "assistant");
    assert_string_equal(json_string_value(json_object_get(j, "object")), "chat.completion.chunk");
    json_decref(j);
    fs_openai_choice last = {"", 0, NULL, 0, "stop"};
    j = parsed(fs_openai_chunk_json(&rep, &last, 0));
    c0 = json_array_get(json_object_get(j, "choices"), 0);
    assert_int_equal(json_object_size(json_object_get(c0, "delta")), 0);
    assert_string_equal(json_string_value(json_object_get(c0, "finish_reason")), "stop");
    json_decref(j);
    fs_tokenizer_destroy(tok);
}

static void test_error_and_models(void **state) {
    (void)state;
    fs_openai_error e;
    assert_int_equal(fs_openai_bad(&e, "max_tokens", "bad \xC3 byte"), -400);
    char *s = fs_openai_error_json(&e);
    assert_string_equal(s, "{\"error\":{\"message\":\"bad \xEF\xBF\xBD byte\",\"type\":\"invalid_request_error\","
                           "\"param\":\"max_tokens\",\"code\":null}}");
    free(s);
    fs_openai_error_set(&e, 429, "server_error", "queue_full", NULL, "full");
    s = fs_openai_error_json(&e);
    assert_string_equal(s, "{\"error\":{\"message\":\"full\",\"type\":\"server_error\",\"param\":null,\"code\":\"queue_full\"}}");
    free(s);
    s = fs_openai_models_json("tiny", 5, 1);
    assert_string_equal(s, "{\"object\":\"list\",\"data\":[{\"id\":\"tiny\",\"object\":\"model\",\"created\":5,"
                           "\"owned_by\":\"fastserve\"}]}");
    free(s);
}

static void test_prometheus(void **state) {
    (void)state;
    fs_engine_histogram h = {0};
    h.le[0] = 0.5, h.le[1] = 2, h.le[2] = INFINITY; /* the rest unused */
    h.count[0] = 1, h.count[1] = 3, h.count[2] = 4;
    h.total = 4, h.sum = 7.25;
    fs_buf b = {0};
    fs_prom_histogram(&b, "fastserve_x_seconds", "X.", &h);
    assert_string_equal(b.p, "# HELP fastserve_x_seconds X.\n# TYPE fastserve_x_seconds histogram\n"
                             "fastserve_x_seconds_bucket{le=\"0.5\"} 1\nfastserve_x_seconds_bucket{le=\"2\"} 3\n"
                             "fastserve_x_seconds_bucket{le=\"+Inf\"} 4\nfastserve_x_seconds_sum 7.25\n"
                             "fastserve_x_seconds_count 4\n");
    fs_buf_release(&b);
    fs_engine_stats st = {.struct_size = sizeof st, .running = 3, .n_queues = 2, .queue_len = {4, 1},
                          .kv_blocks_total = 10, .kv_blocks_used = 6, .tokens_out = 12345678901ull,
                          .finished = {0, 7, 2, 1, 0, 0}};
    fs_prom_engine(&b, &st);
    const char *want[] = {"fastserve_requests_running 3\n", "fastserve_kv_blocks_free 4\n",
                          "fastserve_queue_length{level=\"1\"} 1\n", "fastserve_generation_tokens_total 12345678901\n",
                          "fastserve_requests_finished_total{reason=\"cancelled\"} 1\n",
                          "# TYPE fastserve_time_to_first_token_seconds histogram\n"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(b.p, want[i])) fail_msg("metrics lack '%s'", want[i]);
    fs_buf_release(&b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_completion_fields), cmocka_unit_test(test_prompt_forms),
        cmocka_unit_test(test_refusals),          cmocka_unit_test(test_chat),
        cmocka_unit_test(test_completion_response), cmocka_unit_test(test_chat_response),
        cmocka_unit_test(test_error_and_models),  cmocka_unit_test(test_prometheus),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
