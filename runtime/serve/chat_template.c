/* chat_template.c — the plain-text chat template (chat_template.h). */
#include "serve/chat_template.h"

#include <string.h>

typedef struct role_name {
    const char *name; /* the API's */
    fs_chat_role role;
} role_name;

static const role_name ROLES[] = {
    {"system", FS_CHAT_SYSTEM},
    {"developer", FS_CHAT_SYSTEM},
    {"user", FS_CHAT_USER},
    {"assistant", FS_CHAT_ASSISTANT},
};

/* What the template writes before each role's content. */
static const char *const PREFIX[] = {
    [FS_CHAT_SYSTEM] = "System: ",
    [FS_CHAT_USER] = "User: ",
    [FS_CHAT_ASSISTANT] = "Assistant: ",
};

const char *const fs_chat_stops[] = {"\nUser:", "\nSystem:", "\nAssistant:", NULL};

int fs_chat_role_of(const char *name) {
    for (size_t i = 0; i < sizeof ROLES / sizeof ROLES[0]; i++)
        if (strcmp(ROLES[i].name, name) == 0) return (int)ROLES[i].role;
    return -1;
}

void fs_chat_render_message(fs_buf *out, fs_chat_role role, const char *content, size_t len) {
    fs_buf_puts(out, PREFIX[role]);
    fs_buf_add(out, content, len);
    fs_buf_add(out, "\n", 1);
}

void fs_chat_render_reply_start(fs_buf *out) { fs_buf_puts(out, "Assistant:"); }
