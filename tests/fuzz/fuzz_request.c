/* fuzz_request.c — the server's request validation (serve/openai.h): raw
 * body bytes to a request or an error, as POST /v1/completions and
 * /v1/chat/completions see them (libFuzzer; tests/fuzz/README.md).
 *
 * Input: the first byte picks the route (even: completions, odd: chat),
 * the rest is the body. The parser either refuses with an HTTP status of
 * 4xx (or 500 when memory runs out), an error type and a message, or
 * returns a request within the limits: a prompt (text or token ids),
 * max_tokens at most the server's limit, temperature in [0, 2], top_p in
 * (0, 1], at most the stop strings and log-probabilities OpenAI allows. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve/openai.h"

#define LIMIT 4096 /* [serve] max_tokens_limit */

static void check(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "fuzz_request: %s\n", what);
        abort();
    }
}

static void check_refusal(const fs_openai_error *e, const fs_openai_request *r) {
    check((e->status >= 400 && e->status < 500) || e->status == 500, "a refusal that is not a 4xx (or 500)");
    check(e->type && *e->type, "a refusal without an error type");
    check(e->message[0] != 0, "a refusal without a message");
    check(!r->prompt && !r->prompt_ids && !r->n_stop, "a refused request that still holds something");
}

static void check_request(const fs_openai_request *r) {
    check(r->prompt != NULL || r->prompt_ids != NULL, "a request without a prompt");
    check(!r->prompt || strlen(r->prompt) == r->prompt_len, "a prompt whose length is not its text's");
    check(!r->max_tokens_given || r->max_tokens <= LIMIT, "max_tokens past the server's limit");
    check(r->sampler.temperature >= 0 && r->sampler.temperature <= 2, "a temperature outside [0, 2]");
    check(r->sampler.top_p > 0 && r->sampler.top_p <= 1, "a top_p outside (0, 1]");
    check(r->n_stop <= FS_OPENAI_MAX_ALL_STOPS, "too many stop strings");
    for (size_t i = 0; i < r->n_stop; i++) check(r->stop[i] && r->stop_len[i] > 0, "an empty stop string");
    check(r->top_logprobs <= FS_OPENAI_MAX_LOGPROBS, "too many log-probabilities");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    /* the body alone in a buffer of its size: a read past it is ASan's to see */
    size_t n = size - 1;
    char *body = malloc(n ? n : 1);
    if (!body) return 0;
    memcpy(body, data + 1, n);
    fs_openai_limits lim = {.model_id = "fastserve", .max_tokens_limit = LIMIT};
    fs_openai_request r;
    fs_openai_error e;
    memset(&r, 0, sizeof r);
    memset(&e, 0, sizeof e);
    int rc = data[0] & 1 ? fs_openai_parse_chat(body, n, &lim, &r, &e)
                         : fs_openai_parse_completion(body, n, &lim, &r, &e);
    if (rc)
        check_refusal(&e, &r);
    else
        check_request(&r);
    fs_openai_request_release(&r);
    free(body);
    return 0;
}
