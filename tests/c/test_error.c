/* test_error.c — br_strerror. */
#include "harness.h"

#include <limits.h>

TEST(names_common_errors)
{
    CHECK(strstr(br_strerror(-ECANCELED), "ECANCELED") != NULL);
    CHECK(strcmp(br_strerror(-ECANCELED), "ECANCELED: operation canceled") == 0);
    CHECK(strncmp(br_strerror(-EINVAL), "EINVAL: ", 8) == 0);
    CHECK(strncmp(br_strerror(-ESHUTDOWN), "ESHUTDOWN: ", 11) == 0);
    CHECK(strncmp(br_strerror(-EDEADLK), "EDEADLK: ", 9) == 0);
    CHECK(strcmp(br_strerror(-EIO), "EIO: input/output error") == 0);
    CHECK(strcmp(br_strerror(-EDOTDOT), "EDOTDOT: RFS specific error") == 0); /* acronym kept */
    CHECK(strcmp(br_strerror(ECANCELED), br_strerror(-ECANCELED)) == 0);
}

TEST(never_null)
{
    static const int odd[] = {0, 1, -1, -4095, -9999, 9999, INT_MIN, INT_MAX, -255, -256};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        const char *s = br_strerror(odd[i]);
        CHECK(s != NULL);
        CHECK(s[0] != '\0');
    }
    for (int e = -300; e <= 0; e++)
        CHECK(br_strerror(e) != NULL);
}

static void *name_many(void *arg)
{
    const char **out = arg;
    for (int i = 0; i < 1000; i++)
        *out = br_strerror(-ECANCELED);
    return NULL;
}

TEST(thread_safe_first_use)
{
    /* Many threads race to the first call, which builds the table. */
    pthread_t t[8];
    const char *got[8];
    for (int i = 0; i < 8; i++)
        t[i] = bt_thread(name_many, &got[i]);
    for (int i = 0; i < 8; i++) {
        bt_join(t[i]);
        CHECK(strcmp(got[i], "ECANCELED: operation canceled") == 0);
    }
}

BT_MAIN()
