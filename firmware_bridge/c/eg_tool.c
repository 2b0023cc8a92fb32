/*
 * eg_tool: a line-oriented driver for the reference code, used by the tests
 * (and handy for firmware authors checking their own frames).
 *
 *   enc SEQ TS TYPE FIELDS...  ->  WIRE-HEX            (encode with eg_writer)
 *   dec WIRE-HEX               ->  SEQ TS TYPE FIELDS... | ERR crc|framing|version|type
 *   str WIRE-HEX               ->  the same, fed byte by byte through eg_stream
 *
 * Numbers are decimal; strings and byte strings are "x" + hex; floats are
 * their binary32 bit patterns as 8 hex digits. FIELDS per TYPE (decimal):
 *   1 HELLO     xSERIAL xFIRMWARE MAX_VERSION N (xNAME xUNIT KIND MINBITS MAXBITS)*N
 *   2 DATA      NC NS INTERVAL VALUEBITS*(NC*NS)
 *   3 HEARTBEAT UPTIME      4 ERROR CODE xMESSAGE
 *   129 ACK     ACKED       130 COMMAND CODE xARG
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgegov_frame.h"

static char *next_tok(char **p) {
    char *t;
    while (**p == ' ') (*p)++;
    if (!**p) return NULL;
    t = *p;
    while (**p && **p != ' ') (*p)++;
    if (**p) *(*p)++ = 0;
    return t;
}

static unsigned long long num(char **p) {
    char *t = next_tok(p);
    return t ? strtoull(t, NULL, 10) : 0;
}

static size_t unhex(const char *h, uint8_t *out, size_t cap) {
    size_t n = strlen(h) / 2;
    if (n > cap) n = cap;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(h + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
    return n;
}

static void put_xstr(eg_writer *w, char **p) {
    uint8_t b[300];
    char *t = next_tok(p);
    size_t n = t ? unhex(t + 1, b, sizeof b) : 0;
    eg_put_str(w, (const char *)b, n);
}

static void put_bits(eg_writer *w, char **p) {
    char *t = next_tok(p);
    uint32_t bits = t ? (uint32_t)strtoul(t, NULL, 16) : 0;
    float f;
    memcpy(&f, &bits, 4);
    eg_put_f32(w, f);
}

static void encode(char *p) {
    eg_writer w;
    uint8_t wire[EG_MAX_WIRE];
    uint32_t seq = (uint32_t)num(&p);
    uint64_t ts = (uint64_t)num(&p);
    unsigned type = (unsigned)num(&p);
    size_t n;
    eg_begin(&w, (uint8_t)type, seq, ts);
    if (type == EG_HELLO) {
        unsigned ch;
        put_xstr(&w, &p);
        put_xstr(&w, &p);
        eg_put_u8(&w, (uint8_t)num(&p));
        ch = (unsigned)num(&p);
        eg_put_u8(&w, (uint8_t)ch);
        for (unsigned i = 0; i < ch; i++) {
            put_xstr(&w, &p);
            put_xstr(&w, &p);
            eg_put_u8(&w, (uint8_t)num(&p));
            put_bits(&w, &p);
            put_bits(&w, &p);
        }
    } else if (type == EG_DATA) {
        unsigned nc = (unsigned)num(&p), ns = (unsigned)num(&p);
        eg_put_u8(&w, (uint8_t)nc);
        eg_put_u8(&w, (uint8_t)ns);
        eg_put_u16(&w, (uint16_t)num(&p));
        for (unsigned i = 0; i < nc * ns; i++) put_bits(&w, &p);
    } else if (type == EG_HEARTBEAT || type == EG_ACK) {
        eg_put_u32(&w, (uint32_t)num(&p));
    } else if (type == EG_ERROR) {
        eg_put_u16(&w, (uint16_t)num(&p));
        put_xstr(&w, &p);
    } else if (type == EG_COMMAND) {
        uint8_t b[300];
        char *t;
        size_t k;
        eg_put_u8(&w, (uint8_t)num(&p));
        t = next_tok(&p);
        k = t ? unhex(t + 1, b, sizeof b) : 0;
        eg_put_u8(&w, (uint8_t)k);
        for (size_t i = 0; i < k; i++) eg_put_u8(&w, b[i]);
    }
    n = eg_finish(&w, wire);
    if (!n) { puts("ERR toolong"); return; }
    for (size_t i = 0; i < n; i++) printf("%02x", wire[i]);
    putchar('\n');
}

static void print_xstr(eg_reader *r) {
    const uint8_t *s;
    uint8_t n;
    eg_get_str(r, &s, &n);
    printf(" x");
    for (unsigned i = 0; i < n; i++) printf("%02x", s[i]);
}

static void print_frame(const eg_frame *f) {
    eg_reader r;
    eg_reader_init(&r, f);
    printf("%" PRIu32 " %" PRIu64 " %u", f->seq, f->timestamp_ms, (unsigned)f->type);
    if (f->type == EG_HELLO) {
        unsigned ch;
        print_xstr(&r);
        print_xstr(&r);
        printf(" %u", (unsigned)eg_get_u8(&r));
        ch = eg_get_u8(&r);
        printf(" %u", ch);
        for (unsigned i = 0; i < ch; i++) {
            print_xstr(&r);
            print_xstr(&r);
            printf(" %u", (unsigned)eg_get_u8(&r));
            printf(" %08" PRIx32, eg_get_u32(&r));
            printf(" %08" PRIx32, eg_get_u32(&r));
        }
    } else if (f->type == EG_DATA) {
        unsigned nc = eg_get_u8(&r), ns = eg_get_u8(&r);
        printf(" %u %u %u", nc, ns, (unsigned)eg_get_u16(&r));
        for (unsigned i = 0; i < nc * ns; i++) printf(" %08" PRIx32, eg_get_u32(&r));
    } else if (f->type == EG_HEARTBEAT || f->type == EG_ACK) {
        printf(" %" PRIu32, eg_get_u32(&r));
    } else if (f->type == EG_ERROR) {
        printf(" %u", (unsigned)eg_get_u16(&r));
        print_xstr(&r);
    } else if (f->type == EG_COMMAND) {
        printf(" %u", (unsigned)eg_get_u8(&r));
        print_xstr(&r);
    }
    putchar('\n');
}

static void report(eg_status st, const eg_frame *f) {
    static const char *names[] = {"ok", "more", "crc", "framing", "version", "type"};
    if (st == EG_OK) print_frame(f);
    else printf("ERR %s\n", names[st]);
}

int main(void) {
    static char line[8192];
    static uint8_t bytes[4096];
    static eg_frame f;
    while (fgets(line, sizeof line, stdin)) {
        char *p = line;
        char *cmd;
        line[strcspn(line, "\r\n")] = 0;
        cmd = next_tok(&p);
        if (!cmd) continue;
        if (!strcmp(cmd, "enc")) {
            encode(p);
        } else if (!strcmp(cmd, "dec")) {
            char *h = next_tok(&p);
            size_t n = h ? unhex(h, bytes, sizeof bytes) : 0;
            if (n && bytes[n - 1] == 0) n--; /* drop the delimiter */
            report(eg_decode(bytes, n, &f), &f);
        } else if (!strcmp(cmd, "str")) {
            /* all results of the stream, space-separated statuses, frames on own lines */
            eg_stream s;
            char *h = next_tok(&p);
            size_t n = h ? unhex(h, bytes, sizeof bytes) : 0;
            eg_stream_init(&s);
            for (size_t i = 0; i < n; i++) {
                eg_status st = eg_stream_push(&s, bytes[i], &f);
                if (st != EG_MORE) report(st, &f);
            }
            puts("END");
        } else {
            printf("ERR command\n");
        }
        fflush(stdout);
    }
    return 0;
}
