/* pngxml: a tiny tool of the pycvmfs real-package test stack.
 *
 * It links libpng, libxml2 and zlib taken from the stack, so running it from a view proves the
 * view (PATH) and the libraries' run paths (RUNPATH) work:
 *
 *   pngxml --version            the versions of the three libraries, as loaded at run time
 *   pngxml topng IN.xml OUT.png an <image> document (rows of hex grey levels) to an 8-bit PNG
 *   pngxml toxml IN.png         any PNG to such a document (grey), with the zlib CRC-32 of its pixels
 *
 * The document:  <image width="3" height="2"><row>00ff80</row><row>102030</row></image>
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xmlversion.h>
#include <libxml/xmlwriter.h>
#include <png.h>
#include <zlib.h>

#define PNGXML_VERSION "1.0"

static int fail(const char *what, const char *detail)
{
    fprintf(stderr, "pngxml: %s: %s\n", what, detail);
    return 1;
}

/* The versions the program was compiled against must be the ones it runs with: a mismatch means
 * headers and libraries came from different places (e.g. the stack's headers, the system's libs). */
static int print_versions(void)
{
    const char *png_run = png_get_libpng_ver(NULL);
    const char *zlib_run = zlibVersion();
    int status = 0;

    printf("pngxml %s (libpng %s, zlib %s, libxml2 %s)\n", PNGXML_VERSION, png_run, zlib_run,
           xmlParserVersion);
    if (strcmp(png_run, PNG_LIBPNG_VER_STRING) != 0)
        status = fail("libpng mismatch, compiled against", PNG_LIBPNG_VER_STRING);
    if (strcmp(zlib_run, ZLIB_VERSION) != 0)
        status = fail("zlib mismatch, compiled against", ZLIB_VERSION);
    if (strcmp(xmlParserVersion, LIBXML_VERSION_STRING LIBXML_VERSION_EXTRA) != 0)
        status = fail("libxml2 mismatch, compiled against", LIBXML_VERSION_STRING);
    return status;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static long attribute_number(xmlNodePtr node, const char *name)
{
    xmlChar *text = xmlGetProp(node, (const xmlChar *)name);
    long value = -1;

    if (text != NULL) {
        char *end = NULL;
        value = strtol((const char *)text, &end, 10);
        if (end == (char *)text || *end != '\0' || value <= 0 || value > 65535)
            value = -1;
        xmlFree(text);
    }
    return value;
}

/* Fills row `y` of `pixels` from the hex text of a <row> element. */
static int read_row(xmlNodePtr row, unsigned char *pixels, long width, long y)
{
    xmlChar *text = xmlNodeGetContent(row);
    size_t length = text ? strlen((const char *)text) : 0;
    int status = 0;

    if (length != (size_t)width * 2) {
        fprintf(stderr, "pngxml: row %ld has %zu hex digits, expected %ld\n", y, length,
                width * 2);
        status = 1;
    }
    for (long x = 0; status == 0 && x < width; x++) {
        int hi = hex_value((char)text[2 * x]), lo = hex_value((char)text[2 * x + 1]);
        if (hi < 0 || lo < 0) {
            fprintf(stderr, "pngxml: row %ld: not a hex digit at column %ld\n", y, x);
            status = 1;
        } else {
            pixels[y * width + x] = (unsigned char)(hi * 16 + lo);
        }
    }
    xmlFree(text);
    return status;
}

static int xml_to_png(const char *in, const char *out)
{
    xmlDocPtr doc = xmlReadFile(in, NULL, XML_PARSE_NONET);
    xmlNodePtr root, row;
    long width, height, y = 0;
    unsigned char *pixels;
    png_image image;
    int status = 0;

    if (doc == NULL)
        return fail(in, "not a well-formed XML document");
    root = xmlDocGetRootElement(doc);
    if (root == NULL || xmlStrcmp(root->name, (const xmlChar *)"image") != 0) {
        xmlFreeDoc(doc);
        return fail(in, "the root element is not <image>");
    }
    width = attribute_number(root, "width");
    height = attribute_number(root, "height");
    if (width < 0 || height < 0) {
        xmlFreeDoc(doc);
        return fail(in, "<image> needs width and height between 1 and 65535");
    }
    pixels = calloc((size_t)width, (size_t)height);
    if (pixels == NULL) {
        xmlFreeDoc(doc);
        return fail(in, "out of memory");
    }
    for (row = root->children; row != NULL && status == 0; row = row->next) {
        if (row->type != XML_ELEMENT_NODE)
            continue;
        if (xmlStrcmp(row->name, (const xmlChar *)"row") != 0 || y >= height)
            status = fail(in, "<image> holds exactly `height` <row> elements");
        else
            status = read_row(row, pixels, width, y++);
    }
    if (status == 0 && y != height)
        status = fail(in, "fewer <row> elements than `height`");
    if (status == 0) {
        memset(&image, 0, sizeof image);
        image.version = PNG_IMAGE_VERSION;
        image.width = (png_uint_32)width;
        image.height = (png_uint_32)height;
        image.format = PNG_FORMAT_GRAY;
        if (!png_image_write_to_file(&image, out, 0, pixels, 0, NULL))
            status = fail(out, image.message);
    }
    free(pixels);
    xmlFreeDoc(doc);
    return status;
}

static int png_to_xml(const char *in)
{
    png_image image;
    unsigned char *pixels;
    xmlTextWriterPtr writer;
    char *hex;
    int status = 0;

    memset(&image, 0, sizeof image);
    image.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_file(&image, in))
        return fail(in, image.message);
    image.format = PNG_FORMAT_GRAY;
    pixels = malloc(PNG_IMAGE_SIZE(image));
    hex = malloc((size_t)image.width * 2 + 1);
    if (pixels == NULL || hex == NULL || !png_image_finish_read(&image, NULL, pixels, 0, NULL)) {
        status = fail(in, pixels && hex ? image.message : "out of memory");
        png_image_free(&image);
        free(pixels);
        free(hex);
        return status;
    }
    writer = xmlNewTextWriterFilename("-", 0);
    xmlTextWriterStartDocument(writer, NULL, "UTF-8", NULL);
    xmlTextWriterStartElement(writer, BAD_CAST "image");
    xmlTextWriterWriteFormatAttribute(writer, BAD_CAST "width", "%u", image.width);
    xmlTextWriterWriteFormatAttribute(writer, BAD_CAST "height", "%u", image.height);
    xmlTextWriterWriteFormatAttribute(
        writer, BAD_CAST "crc32", "%08lx",
        crc32(crc32(0L, Z_NULL, 0), pixels, (uInt)PNG_IMAGE_SIZE(image)));
    for (png_uint_32 y = 0; y < image.height; y++) {
        for (png_uint_32 x = 0; x < image.width; x++)
            snprintf(hex + 2 * x, 3, "%02x", pixels[(size_t)y * image.width + x]);
        xmlTextWriterWriteElement(writer, BAD_CAST "row", BAD_CAST hex);
    }
    xmlTextWriterEndDocument(writer);
    xmlFreeTextWriter(writer);
    free(pixels);
    free(hex);
    return status;
}

int main(int argc, char **argv)
{
    int status;

    LIBXML_TEST_VERSION
    if (argc == 2 && strcmp(argv[1], "--version") == 0)
        status = print_versions();
    else if (argc == 4 && strcmp(argv[1], "topng") == 0)
        status = xml_to_png(argv[2], argv[3]);
    else if (argc == 3 && strcmp(argv[1], "toxml") == 0)
        status = png_to_xml(argv[2]);
    else {
        fprintf(stderr, "usage: pngxml --version | topng IN.xml OUT.png | toxml IN.png\n");
        status = 2;
    }
    xmlCleanupParser();
    return status;
}
