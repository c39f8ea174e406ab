/* chat_template.h — how /v1/chat/completions turns messages into the
 * prompt text of a model that has no chat template of its own (the models
 * fsrun trains are plain language models).
 *
 * The template, one line per message, then the start of the reply:
 *
 *     System: You answer in one sentence.
 *     User: Who made the heavens?
 *     Assistant: God.
 *     User: And the earth?
 *     Assistant:
 *
 * A message is "<Role>: <content>\n" with its content as given (new lines
 * and all); the roles are System ("system", and "developer" as newer
 * clients call it), User ("user") and Assistant ("assistant"); other roles
 * (tool, function) are refused. The prompt ends with "Assistant:" and no
 * space: a byte-pair tokenizer keeps the space with the reply's first word.
 *
 * The reply ends where the model starts a turn of its own: the stop strings
 * "\nUser:", "\nSystem:" and "\nAssistant:" are added to the request's own
 * (and, like them, never appear in the reply), besides the end-of-text
 * token, max_tokens and the context. */
#ifndef FS_SERVE_CHAT_TEMPLATE_H
#define FS_SERVE_CHAT_TEMPLATE_H

#include <stddef.h>

#include "serve/buf.h"

typedef enum fs_chat_role { FS_CHAT_SYSTEM, FS_CHAT_USER, FS_CHAT_ASSISTANT } fs_chat_role;

/* The role a message's "role" names, or -1. */
int fs_chat_role_of(const char *name);

/* Appends message m of the conversation to out. */
void fs_chat_render_message(fs_buf *out, fs_chat_role role, const char *content, size_t len);
/* Appends what starts the reply. */
void fs_chat_render_reply_start(fs_buf *out);

/* The template's stop strings (NULL-terminated). */
extern const char *const fs_chat_stops[];

#endif
