/* toygen: a toy Monte Carlo "event generator" of the pycvmfs real-package test stack
 * (installed under MCGenerators/toygen, validated GenSer-style against a reference summary).
 *
 *   toygen [-c RUNCARD.yaml] [-n EVENTS] [-s SEED] [-o SUMMARY]
 *
 * Each event is a resonance decay (Breit-Wigner mass, sampled by accept-reject) or, with
 * probability `background`, a flat-mass background event, plus a charged multiplicity
 * (2 + binomial(20, 0.3)). The summary holds the event counts, the mass histogram and the
 * multiplicity histogram.
 *
 * The run card is a flat YAML mapping read with libyaml (keys: seed, events, mass, width,
 * background); command-line options win over it. Only +, -, *, / and comparisons are used on
 * doubles (no libm), so the summary is bit-for-bit the same for -O0 and -O2 builds and on any
 * x86_64 or aarch64 machine: the validation compares it byte for byte.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#define TOYGEN_VERSION "1.0"
#define MASS_BINS 40
#define MASS_LO 70.0
#define MASS_HI 110.0
#define MULT_BINS 23

struct run {
    uint64_t seed;
    long events;
    double mass;
    double width;
    double background;
};

/* splitmix64: a small, well-mixed 64-bit generator; uniform doubles in [0, 1). */
static uint64_t rng_state;

static double uniform(void)
{
    uint64_t z = (rng_state += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

static double breit_wigner(double mass, double width)
{
    double half = width / 2.0;
    for (;;) {
        double m = MASS_LO + (MASS_HI - MASS_LO) * uniform();
        double d = m - mass;
        if (uniform() * (d * d + half * half) < half * half)
            return m;
    }
}

static int set_value(struct run *run, const char *key, const char *value, const char *card)
{
    char *end = NULL;
    errno = 0;
    if (strcmp(key, "seed") == 0)
        run->seed = strtoull(value, &end, 10);
    else if (strcmp(key, "events") == 0)
        run->events = strtol(value, &end, 10);
    else if (strcmp(key, "mass") == 0)
        run->mass = strtod(value, &end);
    else if (strcmp(key, "width") == 0)
        run->width = strtod(value, &end);
    else if (strcmp(key, "background") == 0)
        run->background = strtod(value, &end);
    else {
        fprintf(stderr, "toygen: %s: unknown key '%s'\n", card, key);
        return 1;
    }
    if (errno != 0 || end == value || *end != '\0') {
        fprintf(stderr, "toygen: %s: bad value '%s' for '%s'\n", card, value, key);
        return 1;
    }
    return 0;
}

/* Reads a flat mapping of scalars; anything nested is an error. */
static int read_runcard(const char *card, struct run *run)
{
    FILE *f = fopen(card, "rb");
    yaml_parser_t parser;
    yaml_event_t event;
    char key[64] = "";
    int depth = 0, status = 0, done = 0;

    if (f == NULL) {
        fprintf(stderr, "toygen: %s: %s\n", card, strerror(errno));
        return 1;
    }
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_file(&parser, f);
    while (!done && status == 0) {
        if (!yaml_parser_parse(&parser, &event)) {
            fprintf(stderr, "toygen: %s: line %lu: %s\n", card,
                    (unsigned long)parser.problem_mark.line + 1, parser.problem);
            status = 1;
            break;
        }
        if (event.type == YAML_MAPPING_START_EVENT && ++depth > 1)
            status = 1;
        else if (event.type == YAML_SEQUENCE_START_EVENT)
            status = 1;
        else if (event.type == YAML_SCALAR_EVENT) {
            const char *text = (const char *)event.data.scalar.value;
            if (key[0] == '\0') {
                snprintf(key, sizeof key, "%s", text);
            } else {
                status = set_value(run, key, text, card);
                key[0] = '\0';
            }
        } else if (event.type == YAML_STREAM_END_EVENT)
            done = 1;
        if (status != 0 && event.type != YAML_SCALAR_EVENT)
            fprintf(stderr, "toygen: %s: the run card is a flat mapping of scalars\n", card);
        yaml_event_delete(&event);
    }
    yaml_parser_delete(&parser);
    fclose(f);
    return status;
}

static void generate(const struct run *run, FILE *out)
{
    long mass_hist[MASS_BINS] = {0}, mult_hist[MULT_BINS] = {0};
    long signal = 0, background = 0;
    double mass_sum = 0.0, mult_sum = 0.0;

    rng_state = run->seed;
    for (long i = 0; i < run->events; i++) {
        double m;
        int mult = 2, bin;
        if (uniform() < run->background) {
            m = MASS_LO + (MASS_HI - MASS_LO) * uniform();
            background++;
        } else {
            m = breit_wigner(run->mass, run->width);
            signal++;
        }
        for (int t = 0; t < 20; t++)
            mult += uniform() < 0.3;
        bin = (int)((m - MASS_LO) / (MASS_HI - MASS_LO) * MASS_BINS);
        mass_hist[bin < MASS_BINS ? bin : MASS_BINS - 1]++;   /* m may round up to MASS_HI */
        mult_hist[mult]++;
        mass_sum += m;
        mult_sum += mult;
    }
    fprintf(out, "# toygen %s summary\n", TOYGEN_VERSION);
    fprintf(out, "seed %llu\nevents %ld\nsignal %ld\nbackground %ld\n",
            (unsigned long long)run->seed, run->events, signal, background);
    fprintf(out, "mean_mass %.6f\nmean_multiplicity %.6f\n",
            run->events ? mass_sum / run->events : 0.0,
            run->events ? mult_sum / run->events : 0.0);
    fprintf(out, "histogram mass %d %.1f %.1f\n", MASS_BINS, MASS_LO, MASS_HI);
    for (int b = 0; b < MASS_BINS; b++)
        fprintf(out, "%d %ld\n", b, mass_hist[b]);
    fprintf(out, "histogram multiplicity %d 0 %d\n", MULT_BINS, MULT_BINS);
    for (int b = 0; b < MULT_BINS; b++)
        fprintf(out, "%d %ld\n", b, mult_hist[b]);
}

int main(int argc, char **argv)
{
    struct run run = {42, 1000, 91.19, 2.5, 0.2};
    const char *card = NULL, *output = NULL;
    FILE *out = stdout;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--version") == 0) {
            printf("toygen %s (libyaml %s)\n", TOYGEN_VERSION, yaml_get_version_string());
            return 0;
        }
        if (i + 1 >= argc || argv[i][0] != '-' || strchr("cnso", argv[i][1]) == NULL ||
            argv[i][2] != '\0') {
            fprintf(stderr, "usage: toygen [-c RUNCARD.yaml] [-n EVENTS] [-s SEED] [-o SUMMARY]\n");
            return 2;
        }
        if (argv[i][1] == 'c')
            card = argv[++i];
        else if (argv[i][1] == 'o')
            output = argv[++i];
        else
            i++;
    }
    if (card != NULL && read_runcard(card, &run) != 0)
        return 1;
    for (int i = 1; i + 1 < argc; i += 2) {   /* command-line values win over the run card */
        if (argv[i][1] == 'n' && set_value(&run, "events", argv[i + 1], "command line"))
            return 2;
        if (argv[i][1] == 's' && set_value(&run, "seed", argv[i + 1], "command line"))
            return 2;
    }
    if (run.events < 0 || run.width <= 0.0 || run.background < 0.0 || run.background > 1.0) {
        fprintf(stderr, "toygen: events >= 0, width > 0 and 0 <= background <= 1 are needed\n");
        return 2;
    }
    if (output != NULL && (out = fopen(output, "w")) == NULL) {
        fprintf(stderr, "toygen: %s: %s\n", output, strerror(errno));
        return 1;
    }
    generate(&run, out);
    if (out != stdout && fclose(out) != 0) {
        fprintf(stderr, "toygen: %s: %s\n", output, strerror(errno));
        return 1;
    }
    return 0;
}
